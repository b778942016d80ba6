"""ViewNeTI for Blender: novel views from the active camera's pose, rendered by a local backend.

Registration only: nothing touches the network or the disk here. The add-on talks to the backend
over HTTP (see server/API.md) and never imports it.
"""

try:
    import bpy
except ImportError:  # imported outside Blender, e.g. by `python -m blender_addon.build`
    bpy = None

if bpy is not None:
    from . import backend, export, operators, panel, properties, session

    _register_classes, _unregister_classes = bpy.utils.register_classes_factory(
        properties.CLASSES + operators.CLASSES + panel.CLASSES
    )

    def register():
        if bpy is None:  # unreachable (defined only when bpy imported); narrows bpy for the type checker
            raise RuntimeError("the ViewNeTI add-on registers only inside Blender")
        _register_classes()
        properties.register_properties()
        if session.on_load_pre not in bpy.app.handlers.load_pre:
            bpy.app.handlers.load_pre.append(session.on_load_pre)

    def unregister():
        if bpy is None:  # unreachable, as in register()
            raise RuntimeError("the ViewNeTI add-on unregisters only inside Blender")
        export.cancel_active()
        session.shutdown()
        backend.stop_backend()
        if session.on_load_pre in bpy.app.handlers.load_pre:
            bpy.app.handlers.load_pre.remove(session.on_load_pre)
        properties.unregister_properties()
        _unregister_classes()
