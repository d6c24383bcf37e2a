"""Errors caused by the user's input. The CLI prints them as one line, no traceback."""


class UserError(Exception):
    """Bad input from the user: a file, a config value, an option. The message says what to fix."""


class ModelError(UserError):
    """A checkpoint that cannot be loaded, or two checkpoints that cannot be interpolated."""
