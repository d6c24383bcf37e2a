"""Errors caused by the user's input. The CLI prints them as one line, no traceback."""


class UserError(Exception):
    """Bad input from the user: a file, a config value, an option. The message says what to fix."""


class FieldError(UserError):
    """A bad value of one named input: ``--FIELD DETAIL`` on the command line; an HTTP request
    names the same ``field`` (``FIELD DETAIL``)."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"--{field} {detail}")
        self.field, self.detail = field, detail


class ModelError(UserError):
    """A checkpoint that cannot be loaded, or two checkpoints that cannot be interpolated."""
