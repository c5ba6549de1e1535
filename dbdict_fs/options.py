"""The worker options, declared once (DESIGN.md 7): grace, lease, heartbeat, max-attempts, ...

Every place that takes them is made from `WORKER_OPTIONS`: the `run`/`work`/`cmdline`
arguments (`add_arguments`), `runner.Options` (its fields, defaults and `check`), and
`dbdict submit`'s worker group and the sbatch script's worker command line (`command_line`).
So an option has one validator and one default, and a bad value is refused where it is
typed, not later in a worker.
"""

import argparse
import math
import os
from .errors import UsageError


class Kind:
    """What values an option takes: `parse` for a command line word, `check` for a Python value.
    (A plain class, not a dataclass: importing dataclasses costs every command ~5 ms.)"""

    def __init__(self, what, number=None, low=None, above=False, pattern=None):
        self.what = what  # "a number of seconds > 0", for messages
        self.number = number  # float or int; None for a path or a flag
        self.low = low
        self.above = above  # > low instead of >= low
        self.pattern = pattern  # for a word (number None): the regular expression it must match

    def ok(self, value):
        if self.number is None:
            if self.pattern is not None and isinstance(value, str):
                import re

                return re.fullmatch(self.pattern, value) is not None
            return isinstance(value, str) and value != ""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.number is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        return self.low is None or (value > self.low if self.above else value >= self.low)

    def parse(self, text):
        """argparse `type=`: the value of a command line word, or ArgumentTypeError."""
        if self.number is None:
            value = text
        else:
            try:
                value = self.number(text)
            except ValueError:
                value = None
        if value is None or not self.ok(value):
            raise argparse.ArgumentTypeError(f"expected {self.what}, got {text!r}")
        return value


SECONDS = Kind("a number of seconds >= 0", float, 0)
POSITIVE_SECONDS = Kind("a number of seconds > 0", float, 0, above=True)
POSITIVE_INT = Kind("a whole number >= 1", int, 1)
FINITE = Kind("a finite number", float)
PATH = Kind("a directory")
FLAG = Kind("true or false")
MODULES = Kind("module names separated by commas (numpy,torch)",
               pattern=r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(,[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)*")


class Option:
    """One worker option: its Python name, kind, default, environment variable and help."""

    def __init__(self, name, kind, default, help, env=None, metavar="S", submit=True):  # noqa: A002
        self.name, self.kind, self.default, self.help = name, kind, default, help
        self.env, self.metavar = env, metavar
        self.submit = submit  # passed on to each worker by `dbdict submit`

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    def check(self, value):
        """`value` itself when it is one this option takes, else a UsageError naming the flag."""
        if value is None or (self.kind is FLAG and isinstance(value, bool)) or self.kind.ok(value):
            return value
        raise UsageError(f"{self.flag} must be {self.kind.what}, not {value!r}")

    def from_env(self):
        """The environment's value, checked; None when the variable is unset or empty."""
        text = os.environ.get(self.env) if self.env else None
        if text in (None, ""):
            return None
        try:
            return self.kind.parse(text)
        except argparse.ArgumentTypeError:
            raise UsageError(f"${self.env} must be {self.kind.what}, not {text!r} ({self.flag})") from None


DEFAULT_LEASE = 600.0
DEFAULT_HEARTBEAT = 30.0
RESTART_PRIORITY = 2.0

WORKER_OPTIONS = (
    Option("grace", SECONDS, 60.0, "after 'stop', seconds before the experiment is killed (default 60)"),
    Option("max_runtime", POSITIVE_SECONDS, None, "kill an attempt after S seconds"),
    Option("lease", POSITIVE_SECONDS, DEFAULT_LEASE, "claim lease in seconds (env DBDICT_LEASE, default 600)",
           env="DBDICT_LEASE"),
    Option("heartbeat", POSITIVE_SECONDS, DEFAULT_HEARTBEAT,
           "heartbeat interval, at most lease/5 (env DBDICT_HEARTBEAT, default 30)", env="DBDICT_HEARTBEAT"),
    Option("finish_up_after", SECONDS, None, "after S seconds channel() answers 'finish-up'"),
    Option("save_every", POSITIVE_SECONDS, None, "channel() answers 'save' every S seconds"),
    Option("max_attempts", POSITIVE_INT, 3,
           "attempts lost to crashes or kills before the job is failed (default 3)", metavar="N"),
    Option("max_resumes", POSITIVE_INT, None, "INCOMPLETE returns before the job is failed (default unlimited)",
           metavar="N"),
    Option("restart_priority", FINITE, RESTART_PRIORITY,
           "priority of a job requeued after INCOMPLETE (default 2.0)", metavar="P", submit=False),
    Option("scratch", PATH, None, "run in a node-local copy of workdir under DIR, synced back atomically "
           "(env DBDICT_EXPERIMENT_TEMPDIR)", env="DBDICT_EXPERIMENT_TEMPDIR", metavar="DIR"),
    Option("quiet", FLAG, False, "print less", submit=False),
    Option("preload", MODULES, None, "import these modules once, in a zygote that forks each experiment "
           "(short GPU jobs: e.g. numpy,torch; they must not start CUDA or threads at import)",
           metavar="MOD[,MOD...]"),
    Option("fresh_interpreter", FLAG, False, "start each experiment in a new interpreter instead of forking it "
           "from the worker's zygote or the `run` command (an interpreter start more per attempt; "
           "no --preload)"),
)
BY_NAME = {o.name: o for o in WORKER_OPTIONS}


def add_arguments(group, *, submit=False, defaults=None):
    """Add the worker options to an argparse group. Defaults stay None on the command line
    (the declaration's default applies where the options are used, so the environment can
    still set them); `submit`: only those `dbdict submit` passes on, with `defaults` (help
    texts) for those whose default submit chooses itself."""
    for o in WORKER_OPTIONS:
        if submit and not o.submit:
            continue
        text = (defaults or {}).get(o.name, o.help)
        if o.kind is FLAG:
            short = ["-q"] if o.name == "quiet" else []
            group.add_argument(*short, o.flag, dest=o.name, action="store_true", default=None, help=text)
        else:
            group.add_argument(o.flag, dest=o.name, type=o.kind.parse, metavar=o.metavar, help=text)


def given(args):
    """The worker options a parsed command line sets, as keyword arguments."""
    return {o.name: getattr(args, o.name) for o in WORKER_OPTIONS if getattr(args, o.name, None) is not None}


def resolve(values):
    """Every option's value: the given one, else the environment's, else the default; each
    checked. Unknown names are refused with a did-you-mean. Returns a dict."""
    for key in values:
        if key not in BY_NAME:
            import difflib

            close = difflib.get_close_matches(key, sorted(BY_NAME), n=1)
            raise UsageError(f"unknown option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    out = {}
    for o in WORKER_OPTIONS:
        value = values.get(o.name)
        if value is None:
            value = o.from_env()
        out[o.name] = o.default if value is None else o.check(value)
    check_together(out)
    return out


def command_line(values):
    """`--flag value` words for the options in `values` that `dbdict submit` passes on."""
    check_together(values)
    words = []
    for o in WORKER_OPTIONS:
        value = values.get(o.name)
        if value is None or not o.submit:
            continue
        o.check(value)
        if o.kind is FLAG:
            words += [o.flag] if value else []
        else:
            words += [o.flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return words


def check_together(values):
    """Refuse options that contradict each other (UsageError)."""
    if values.get("preload") and values.get("fresh_interpreter"):
        raise UsageError("--preload imports into the zygote that --fresh-interpreter turns off: choose one")
