"""The backend's object library from the panel: delete and rename a user's object tokens.

Each edit is one backend call (async in the UI); afterwards the selection follows the edit and the
object list is reloaded. The backend's own refusal (a taken name, a built-in object) is shown as it
words it.
"""

from . import connection
from .session import in_scene, run_async
from .status import set_status


def _library_done(scene_name, message, select=None):
    """After a library edit: the status line, the selection, and a fresh object list."""

    def apply(target, _value):
        if select is not None:
            target.viewneti.object_name = select
        set_status(target, message)
        connection.refresh_backend(target, announce=False)

    return in_scene(scene_name, apply)


def delete_object(scene, name):
    """Delete a user object on the backend (built-in ones are refused there); the selection is cleared."""
    name = (name or "").strip()
    if not name:
        raise ValueError("Pick the object to delete under Object.")
    client = connection.make_client()
    select = "" if scene.viewneti.object_name == name else None
    set_status(scene, f"Deleting '{name}'…")
    return run_async(lambda: client.delete_object(name), _library_done(scene.name, f"Deleted '{name}'", select))


def rename_object(scene, name, new_name):
    """Rename a user object on the backend (one atomic step there); the new name stays selected."""
    name, new_name = (name or "").strip(), (new_name or "").strip()
    if not name or not new_name:
        raise ValueError("Pick the object under Object and type its new name.")
    client = connection.make_client()
    select = new_name if scene.viewneti.object_name == name else None
    set_status(scene, f"Renaming '{name}' to '{new_name}'…")
    return run_async(
        lambda: client.rename_object(name, new_name),
        _library_done(scene.name, f"Renamed '{name}' to '{new_name}'", select),
    )
