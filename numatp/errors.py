"""Errors a user can cause. The CLI turns each into one line on stderr."""


class NumatpError(Exception):
    """Something is wrong with what the user asked for or gave us (exit code 1)."""

    exit_code = 1


class UsageError(NumatpError):
    """A bad flag or argument value (exit code 2)."""

    exit_code = 2


class ContextError(NumatpError):
    """A prompt, or a conversation so far, that does not fit the model's context."""


class ModelFileError(NumatpError):
    """A model file that is missing, unreadable, corrupt or unsupported."""


class WorkerError(NumatpError):
    """A worker process failed or died."""
