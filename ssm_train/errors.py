"""The user-facing error types, in one module that imports nothing from the project.

Why one module: the errors are what every layer shares (config, data, tasks, checkpoint, CLI), so
defining them inside one of those layers made the others import it just for the class, which is
how ``config -> data -> config`` became a cycle. Nothing here may import from ``ssm_train``
(``tests/test_imports.py`` checks it), so any module can import its errors from here.

How the CLI treats them::

    ValueError
    └── ConfigError            bad input the user can fix: exit status 2, one message, no traceback
        └── DataError          bad data settings or data files (a ``data.*`` key, a file:line)
    RuntimeError
    ├── NonFiniteLossError     training diverged: exit status 1, one message naming the checkpoint
    └── CheckpointWriteError   a checkpoint could not be written (full disk): exit 1, one message

Everything else (a ``ValueError`` or ``TypeError`` raised by a bug) is a traceback and exit 1:
callers catch these classes, never a bare ``ValueError``, so that a bug is never reported as a
mistake in the user's config. Errors that belong to one module and subclass these (``ExportError``,
``CheckpointError``, ``RunDirInUse``, ``SweepError``) stay beside the code that raises them.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "NonFiniteLossError", "CheckpointWriteError"]


class ConfigError(ValueError):
    """A configuration problem; the message names the file, line or key it concerns and what
    would be valid. The CLI prints it and exits with status 2 before (or instead of) training.

    A ``ValueError`` so that code written against the older contract (``except ValueError``)
    still sees it; new code catches ``ConfigError`` itself.
    """


class DataError(ConfigError):
    """Bad input data or data configuration; the message names the file (and line) or the
    ``data.*`` key at fault. A kind of config error: a bad data file is fixed by the user, not by
    a code change, so it exits with status 2 like any other bad setting."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the checkpoint kept, if any.

    Not a config error: the inputs were valid, the run diverged (exit status 1, no traceback)."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, lost permissions); the previous one is intact.

    Not a config error: the run started with room to spare (``run.check_free_space``)."""
