"""The package's exceptions: one base class, each combined with the nearest builtin.

The CLI turns any DbdictError into one line on stderr and the exit code it carries.
"""


class DbdictError(Exception):
    """Base of every error dbdict_fs raises on purpose (exit code 2 unless a subclass says)."""

    exit_code = 2


class UsageError(DbdictError, ValueError):
    """A bad argument or value given by the user (CLI or Python API)."""


class JobNotFound(DbdictError, LookupError):
    """A path that is not a job directory (no config.yaml)."""

    def __init__(self, path, reason="not a job directory (no config.yaml)"):
        super().__init__(path, reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self):
        return f"{self.path}: {self.reason}"


class CorruptJob(DbdictError, ValueError):
    """A job file that cannot be parsed or does not validate."""

    def __init__(self, path, reason):
        super().__init__(path, reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self):
        return f"{self.path}: corrupt: {self.reason}"


class ExperimentError(DbdictError, ImportError):
    """An experiment spec that cannot be resolved or imported."""


class NotRunnable(DbdictError, RuntimeError):
    """The job is held by a live worker, or is done, failed or canceled (exit 4)."""

    exit_code = 4


class Fenced(DbdictError, RuntimeError):
    """This process lost its claim (stolen, canceled, or heartbeat too old): it must not write."""

    exit_code = 4


class WriteError(DbdictError, OSError):
    """A state or job file could not be written (full disk, permissions); nothing was replaced."""
