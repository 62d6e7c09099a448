"""The errors a user can meet, all in one light module (no torch), all derived from `UserError`.

Why one base: the CLI ends a `UserError` with one line naming the file or key and what to do (the
traceback only with `--debug`); anything else is a bug in cmim and keeps its traceback. Each class
is raised by the part of cmim its docstring names.
"""


class UserError(Exception):
    """A problem with the input (config, data, checkpoint, the disk, a job): said in one line."""


class ConfigError(UserError, ValueError):
    """A config problem, with the key path and what to do about it (cmim.config, cmim.options)."""


class SourceError(UserError, RuntimeError):
    """The source tree is missing or not in the expected layout (names the folder and the layout)."""


class FormatError(SourceError, ValueError):
    """An unknown source format (a ValueError too: a wrong argument as much as a wrong source)."""


class ShardingError(UserError, RuntimeError):
    """A split cannot be sharded (too many bad files, an empty split, a folder in use)."""


class DataError(UserError, RuntimeError):
    """A shard or manifest that cannot be used, with the shard, the reason and what to do."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used, named with the reason and what to do."""


class NonFiniteLoss(UserError, RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left intact."""


class RunLocked(UserError, RuntimeError):
    """Another process is training this run right now."""


class JobFailed(UserError, RuntimeError):
    """A submitted training job ended with an error; its log holds the traceback."""


class UnsafeFile(UserError, ValueError):
    """A file whose unpickling would call something other than plain data and tensors (cmim.io.torch_load);
    `refused` names the global it asked for."""

    refused: str = ""


