"""The package's exceptions: one base class, each combined with the nearest builtin.

The CLI turns any DbdictError into one line on stderr and the exit code it carries.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit code of every command (DESIGN.md 7); cli.main is where errors become them."""

    OK = 0
    FAILED = 1          # the job (or, for `work`, every job it ran) failed
    USAGE = 2           # a usage or input error, or an internal error
    INCOMPLETE = 3      # requeued after INCOMPLETE, or the worker was stopped by a signal
    NOT_RUNNABLE = 4    # running elsewhere, done, failed or canceled; or this process was fenced
    INTERRUPTED = 130   # Ctrl-C (128 + SIGINT)


class DbdictError(Exception):
    """Base of every error dbdict_fs raises on purpose (exit code 2 unless a subclass says)."""

    exit_code = ExitCode.USAGE


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

    exit_code = ExitCode.NOT_RUNNABLE


class Fenced(DbdictError, RuntimeError):
    """This process lost its claim (stolen, canceled, or heartbeat too old): it must not write."""

    exit_code = ExitCode.NOT_RUNNABLE


class WriteError(DbdictError, OSError):
    """A state or job file could not be written (full disk, permissions); nothing was replaced."""


class Interrupted(DbdictError):
    """Ctrl-C stopped a command part-way; the message says what was done (exit 130)."""

    exit_code = ExitCode.INTERRUPTED
