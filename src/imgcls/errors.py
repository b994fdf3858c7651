"""The one base class of errors that mean bad input, not a bug.

Every module raises its own subclass (``ConfigError``, ``DatasetError``, ``CheckpointError``
...); the CLI prints any :class:`UserError` as one line, without a traceback (set
``IMGCLS_DEBUG=1`` to see it anyway). This module sits at the bottom of the layers so that
every package can subclass it without importing the packages above it.
"""


class UserError(Exception):
    """Input that cannot be used; ``str()`` names the file, folder or option and what is wrong."""


class CheckpointError(UserError):
    """A model or training-state file that cannot be read, or does not fit what it is used with."""
