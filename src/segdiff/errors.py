"""Errors a user can fix. The CLI prints them as one line (no traceback) and exits with status 2."""


class UserError(Exception):
    """A problem with the user's input, options or files; the message says what and how to fix it."""


class DataError(UserError):
    """A data file or folder is missing, unreadable or inconsistent; the message names the file."""


class CheckpointError(UserError):
    """A run folder is missing, incomplete or was written by another configuration."""
