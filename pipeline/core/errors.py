"""The errors a user fixes, at the very bottom so every module (config and metrics alike) can raise them.

One tree: every error a user can fix derives from `PipelineError`, and the CLI (`pipeline.cli.main`)
catches it once, printing its one-line message and exiting with status 2. Stages raise these (or their
own subclasses: `MetricError`, `TableError`, `EnsembleError`, `PackageError`, `TrainingError`, ...) with a
message that names the file, key or value and what is allowed; nothing re-wraps them on the way up.
"""


class PipelineError(Exception):
    """An error the user can fix; the message says where (file, key, value) and what is allowed."""


class ConfigError(PipelineError):
    """A configuration problem the user must fix; the message says where and what."""


class DataError(PipelineError):
    """The competition's files do not match its config; the message names the file and rows."""


class CheckpointError(PipelineError):
    """A checkpoint file that cannot be read; the message names it."""
