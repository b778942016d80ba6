"""Exceptions the library raises on purpose; their messages say what to fix."""


class InputError(ValueError):
    """Bad input from a user or client (a pose, a size, a name, a file). Maps to HTTP 4xx."""


class NotFoundError(InputError, KeyError):
    """An object token, model or job that does not exist. Maps to HTTP 404."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NameTakenError(InputError):
    """A new name that an existing object already has. Maps to HTTP 409."""


class IncompatibleModelError(InputError):
    """A checkpoint trained against a different base model than the one loaded."""


class Cancelled(Exception):
    """A render or job stopped at a step boundary because its caller asked it to."""


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, recognised without importing torch (the server's worker is torch-free)."""
    return type(exc).__name__ == "OutOfMemoryError"
