"""The errors a user can fix. The command line prints their message as one line (no traceback)
and exits with `exit_code`; every other exception is a bug and keeps its traceback.

Each message names the file, key or value at fault and says what to do.
"""
from __future__ import annotations


class UserError(Exception):
    """Base class: a problem with the input (config, workdir, files), not with vit_jax."""
    exit_code = 1
    prefix = "error"


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message says which key and how to fix it."""
    exit_code = 2
    prefix = "config error"


class WorkdirError(UserError):
    """The workdir cannot be used as asked (a file, read-only, holds another model's checkpoints)."""
    exit_code = 2


class CorruptCheckpointError(UserError, RuntimeError):
    """A checkpoint's files are unreadable or fail their digests."""


class DataError(UserError, ValueError):
    """An input file (image, label) cannot be read; the message names it."""


class NonFiniteError(UserError, FloatingPointError):
    """The loss or gradient went NaN/inf; the state was not updated."""


class Interrupted(UserError):
    """Ctrl-C (SIGINT) or SIGTERM stopped the run between two steps."""
    exit_code = 130
    prefix = "interrupted"
