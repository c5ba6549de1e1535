"""The experiment's process: started by the worker, talks to it over two pipes (DESIGN.md 5).

It never writes state itself: `channel.save()` and the final result go to the worker, which
commits them under its claim. It dies with its worker: PR_SET_PDEATHSIG (set by the worker
before exec), EOF on the control pipe, or no ping for half the lease (a SIGSTOPped worker).

Run as `python -m dbdict_fs.child CONTROL_FD RESULT_FD`, or, with `--preload`, as
`run_forked()` in a fork of the worker's zygote (dbdict_fs.zygote).
"""

import json
import os
import signal
import sys
import threading
import time

from .experiment import State, call_experiment, load_experiment
from . import procs
from .procs import boottime

NAME = "dbdict-child"  # a forked experiment's process name (procs.set_name)


def _json_default(value):
    """Let experiments store numpy scalars and arrays without thinking about it."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"a value of type {type(value).__name__} cannot be stored in the state "
                    f"(use str, int, float, bool, None, lists and dicts)")


def _number(value, what):
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (int, float)):
        value = value.item()  # numpy and torch scalars
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise TypeError(f"channel.log: {what} must be a number, not {type(value).__name__}")


def _check_point(step, metrics):
    """{"step": step, metric: value, ...} with plain numbers, or TypeError saying what is wrong."""
    if not metrics:
        raise TypeError("channel.log(step, name=value, ...) needs at least one metric")
    if "step" in metrics:
        raise TypeError("channel.log: 'step' cannot be a metric name")
    point = {"step": _number(step, "step")}
    for name, value in metrics.items():
        point[name] = _number(value, name)
    return point


class Channel:
    """What `channel()` tells the experiment: None (go on), 'stop', 'finish-up', 'save', or
    'prune' (a search's early stopping: return now, the trial ends `pruned`, DESIGN.md 11)."""

    STOP, FINISH_UP, SAVE, PRUNE = "stop", "finish-up", "save", "prune"

    def __init__(self, link, state):
        self._link = link
        self._state = state
        self._pending = set()
        self._lock = threading.Lock()
        self._points, self._sent_at = [], boottime()  # channel.log's batch
        self.flush_each = False  # a pruned search's trial: every point goes at once (DESIGN.md 11)

    def __call__(self):
        with self._lock:
            for answer in (self.STOP, self.PRUNE, self.FINISH_UP):
                if answer in self._pending:
                    return answer  # sticky: the experiment should stop soon
            if self.SAVE in self._pending:
                self._pending.discard(self.SAVE)
                return self.SAVE
        return None

    def _post(self, answer):
        with self._lock:
            self._pending.add(answer)

    def log(self, step, **metrics):
        """Record the metrics at `step` in the job's history (DESIGN.md 10), and keep them
        as the state's latest values. Points go to the worker in batches."""
        point = _check_point(step, metrics)
        self._state.update(metrics)
        with self._lock:
            self._points.append(point)
            due = self.flush_each or len(self._points) >= 256 or boottime() - self._sent_at >= 1.0
        if due:
            self.flush()

    def flush(self):
        """Send the points not sent yet (before a save and the final result, and in batches)."""
        with self._lock:
            points, self._points = self._points, []
            self._sent_at = boottime()
        if points:
            self._link.send({"op": "log", "points": points})

    def save(self):
        """Commit the current state now (through the worker). True when it was written."""
        self.flush()
        try:
            reply = self._link.request({"op": "save", "state": self._state})
        except TypeError:
            from .values import unstorable

            raise TypeError(unstorable(self._state) or "the state cannot be stored") from None
        return bool(reply and reply.get("ok"))


class Link:
    """The child's end of the two pipes, with a thread reading the worker's messages."""

    def __init__(self, control_fd, result_fd):
        self._control = os.fdopen(control_fd, "r", encoding="utf-8")
        self._result = os.fdopen(result_fd, "w", encoding="utf-8")
        self.fence_after = 300.0
        self._last_ping = boottime()
        self._replies = []
        self._cond = threading.Condition()
        self.channel = None

    def read_init(self):
        line = self._control.readline()
        if not line:
            os._exit(70)
        return json.loads(line)

    def start(self):
        threading.Thread(target=self._reader, daemon=True, name="dbdict-control").start()
        threading.Thread(target=self._watchdog, daemon=True, name="dbdict-watchdog").start()

    def _reader(self):
        for line in self._control:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            op = msg.get("op")
            self._last_ping = boottime()
            if op == "signal" and self.channel is not None:
                self.channel._post(msg["value"])
            elif op == "reply":
                with self._cond:
                    self._replies.append(msg)
                    self._cond.notify_all()
        _die("the worker went away")  # EOF: the worker died; nobody may commit our work

    def _watchdog(self):
        while True:
            time.sleep(min(1.0, self.fence_after / 4))
            if boottime() - self._last_ping > self.fence_after:
                _die("no word from the worker for half the lease (stopped or hung)")

    def send(self, msg):
        self._result.write(json.dumps(msg, default=_json_default, allow_nan=True) + "\n")
        self._result.flush()

    def request(self, msg):
        with self._cond:
            self._replies.clear()
        self.send(msg)
        with self._cond:
            # The worker may take long (a --scratch sync-back): wait while it keeps pinging.
            while not self._replies:
                left = self._last_ping + self.fence_after - boottime()
                if left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
            return self._replies.pop(0) if self._replies else None


def _die(reason):
    sys.stderr.write(f"dbdict: experiment killed: {reason}\n")
    sys.stderr.flush()
    try:
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(137)


def command(control_fd, result_fd):
    """The argv of the experiment's process in a fresh interpreter (what `main` reads)."""
    # -P (3.11+): `-m` would put the cwd (the job's workdir, in the shared tree) first on
    # sys.path, and every import would list it on the file server.
    safe = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *safe, "-m", "dbdict_fs.child", str(control_fd), str(result_fd)]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    control_fd, result_fd = int(argv[0]), int(argv[1])
    # The worker decides what a signal means and tells us over the pipe ('stop'): a
    # scheduler that signals every process of the job (scancel, time limit) must not kill
    # the experiment before it can checkpoint.
    for sig in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    # The worker's death (PR_SET_PDEATHSIG, set before exec) ends our whole process group,
    # so nothing the experiment started outlives it.
    signal.signal(signal.SIGHUP, lambda signum, frame: _die("the worker died"))
    link = Link(control_fd, result_fd)
    init = link.read_init()
    link.fence_after = float(init.get("fence_after", 300.0))
    state = State(init["state"])
    channel = Channel(link, state)
    channel.flush_each = bool(init.get("flush_logs"))
    link.channel = channel
    link.start()
    try:
        obj = load_experiment(init["experiment"], init.get("pythonpath") or ())
        returned = call_experiment(obj, state, channel, resume=bool(init.get("resume")))
    except BaseException as exc:  # noqa: BLE001 - every way out is reported to the worker
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            returned = None
        else:
            _print_user_traceback(exc)
            import traceback

            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            _send_final(link, {"op": "error", "error": last, "state": state})
            return 1
    sys.stdout.flush()
    # Only None (COMPLETE) and True (INCOMPLETE) are outcomes (DESIGN.md 5, rev 4): a
    # `return "done"` or `return False` is a mistake that must not end `done` unnoticed.
    if returned is not None and returned is not True:
        error = (f"ValueError: the experiment returned {_shown(returned)}: return COMPLETE (None) "
                 f"or INCOMPLETE (True)")
        sys.stderr.write(f"dbdict: {error}\n")
        sys.stderr.flush()
        _send_final(link, {"op": "error", "error": error, "state": state})
        return 1
    _send_final(link, {"op": "result", "returned": "incomplete" if returned is True else "complete",
                       "state": state})
    return 0


def run_forked(control_fd, result_fd, of_command=False, drop_path=None):
    """main() in a process forked from a zygote instead of a fresh interpreter: the same
    argv, then what the interpreter's exit would do (join the threads the experiment left
    running, run its atexit functions, flush). Returns the exit code.

    `of_command`: the fork is of the `run` command's own process, not of a zygote started
    as the experiment's interpreter would be: its standard streams are made anew, and
    `drop_path` (its startup_path()) leaves sys.path, so a module beside the command does
    not become importable, nor a cwd on NFS get listed at each import."""
    sys.argv = [os.path.abspath(__file__), str(control_fd), str(result_fd)]
    if of_command:
        _fresh_stdio()
        if drop_path is not None and drop_path in sys.path[:2]:
            sys.path.remove(drop_path)
    procs.set_name(NAME)  # its command line is the zygote's: `ps -o comm`, top and tests tell them apart
    try:
        code = main([str(control_fd), str(result_fd)])
    except SystemExit as exc:
        code = exc.code
    try:
        threading._shutdown()  # what Py_FinalizeEx does first: wait for non-daemon threads
    except (AttributeError, RuntimeError):
        pass
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _fresh_stdio():
    """sys.stdin, stdout and stderr over descriptors 0, 1 and 2 as a fresh interpreter under
    _child_env's PYTHONUNBUFFERED=1 makes them (unbuffered writes), whatever the process we
    were forked from had made of its own (a terminal's line buffering, a captured stream)."""
    import io

    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        old = getattr(sys, f"__{name}__", None) or getattr(sys, name, None)
        encoding = getattr(old, "encoding", None) or "utf-8"
        errors = "backslashreplace" if fd == 2 else (getattr(old, "errors", None) or "strict")
        if fd == 0:
            stream = io.TextIOWrapper(io.open(0, "rb", closefd=False), encoding=encoding, errors=errors)
        else:
            stream = io.TextIOWrapper(io.open(fd, "wb", buffering=0, closefd=False), encoding=encoding,
                                      errors=errors, write_through=True)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def startup_path():
    """The sys.path entry this process's interpreter put first for its script, module (the
    cwd, in full) or -c (''), or None (-P): what a fork of it, unlike the experiment's fresh
    `-P` interpreter, would have. Read before the fork changes the cwd."""
    if getattr(sys.flags, "safe_path", False):
        return None
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is not None or script is None:
        startup = {os.getcwd(), ""}  # -m, -c or the REPL
    else:
        startup = {os.path.dirname(os.path.realpath(script)), os.path.dirname(os.path.abspath(script))}
    for entry in sys.path[:2]:  # a launcher (bin/) may have put its checkout first
        if entry in startup:
            return entry
    return None


def _shown(value, limit=80):
    """repr(value), cut to `limit` characters, with its type when repr does not say it."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the mistake
        text = "?"
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    kind = type(value).__name__
    return text if kind in ("str", "bool", "int", "float", "list", "dict", "tuple") else f"{text} (a {kind})"


def _print_user_traceback(exc):
    """The traceback without dbdict_fs's own frames: the user's code is what matters."""
    tb = exc.__traceback__
    package = os.path.dirname(os.path.abspath(__file__))
    while tb is not None and os.path.dirname(os.path.abspath(tb.tb_frame.f_code.co_filename)) == package:
        tb = tb.tb_next
    import traceback

    traceback.print_exception(type(exc), exc, tb or exc.__traceback__)
    sys.stderr.flush()


def _send_final(link, msg):
    if link.channel is not None:
        try:
            link.channel.flush()  # every point before the result: the last commit names them
        except TypeError as exc:
            sys.stderr.write(f"dbdict: cannot store the history: {exc}\n")
    try:
        link.send(msg)
    except TypeError as exc:  # a value that is not JSON: report it as the job's error
        from .values import unstorable

        reason = unstorable(msg.get("state") or {}) or str(exc)
        sys.stderr.write(f"dbdict: cannot store the state: {reason}\n")
        msg = {"op": "error", "error": f"cannot store the state: {reason}", "state": None}
        link.send(msg)


if __name__ == "__main__":
    sys.exit(main())
