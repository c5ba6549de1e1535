"""Running jobs: one booked attempt (`run_job`) and the worker loop (`work`), DESIGN.md 5.

The worker holds the claim and heartbeats; the experiment runs in a child process
(dbdict_fs.child) in its own process group, and only the worker writes state.
"""

import contextlib
import copy
import errno
import fcntl
import itertools
import json
import os
import select
import signal
import stat
import sys
import threading
import time

from . import booking
from . import jobdir as jd
from . import options, procs, seams, shepherd, workdir
from .discovery import Discovery, after_commit
from .errors import CorruptJob, ExitCode, Fenced, JobNotFound, NotRunnable, UsageError, WriteError

# SIGHUP (an ssh session closing, a tmux pane killed) stops like SIGTERM (DESIGN.md 5, rev 4).
# It is not a hard signal: a closing terminal may deliver it twice (the kernel's hangup to the
# foreground group, then the shell's to its jobs), which must not skip the checkpoint.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
HARD_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # a second one of these ends the attempt at once
_LOST = object()  # _wait_child: the claim was lost while waiting


class Options:
    """How attempts run: every worker option of `options.WORKER_OPTIONS` as an attribute,
    the given value, else the environment's, else its default, each checked once."""

    def __init__(self, **values):
        self.__dict__.update(options.resolve(values))
        booking.check_timing(self.lease, self.heartbeat)
        if self.scratch is not None and not os.path.isdir(self.scratch):
            raise UsageError(f"--scratch {self.scratch}: no such directory")

    def zygote(self, attempts):
        """What this worker's zygote imports: --preload's modules; "" for the default zygote
        (nothing of the user's), which a worker of many `attempts` (`work`) keeps: an
        interpreter start once instead of once per attempt (a one-shot `run` would only pay
        it later); or None when every experiment starts in a fresh interpreter."""
        if self.preload or self.fresh_interpreter:
            return self.preload
        return "" if attempts == "many" else None

    def __repr__(self):
        return f"Options({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


make_options = Options


class Outcome:
    """How one attempt ended, and the exit code DESIGN.md 7 gives it. (Not a dataclass:
    importing dataclasses costs every `run` and `work` ~5 ms.)"""

    def __init__(self, jobdir, status, exit_code, message="", epoch=None):
        self.jobdir = jobdir
        self.status = status  # done | failed | ready (requeued) | lost (fenced out) | error (could not write)
        self.exit_code = exit_code
        self.message = message
        self.epoch = epoch

    def __repr__(self):
        return (f"Outcome(jobdir={self.jobdir!r}, status={self.status!r}, exit_code={self.exit_code!r}, "
                f"message={self.message!r}, epoch={self.epoch!r})")

    def __eq__(self, other):
        return isinstance(other, Outcome) and vars(self) == vars(other)

    __hash__ = None


# ---------------------------------------------------------------- signals

class StopSignals:
    """Turns SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2 (or `which`) into a request to stop,
    readable by select()."""

    def __init__(self, which=None):
        self.which = STOP_SIGNALS if which is None else which
        self.received = []
        self.fd = None
        self._old = {}
        self._old_wakeup = None

    def __enter__(self):
        import threading
        if threading.current_thread() is not threading.main_thread():
            return self  # signals can only be handled in the main thread; run without them
        r, w = os.pipe()
        for fd in (r, w):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
            os.set_inheritable(fd, False)
        self.fd, self._w = r, w
        self._old_wakeup = signal.set_wakeup_fd(w)
        for sig in self.which:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received.append(signum)

    def __exit__(self, *exc):
        if self.fd is None:
            return
        for sig, old in self._old.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(self._old_wakeup if self._old_wakeup is not None else -1)
        os.close(self.fd)
        os.close(self._w)
        self.fd = None

    def drain(self):
        try:
            while os.read(self.fd, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    @property
    def stop(self):
        return bool(self.received)

    @property
    def hard(self):
        """Two SIGTERM/SIGINT (in any order with others): kill the experiment now."""
        return sum(sig in HARD_SIGNALS for sig in self.received) >= 2


# ---------------------------------------------------------------- the child process

DEATH_SIGNAL = signal.SIGHUP  # dbdict_fs.child turns it into a kill of its whole process group


def _shepherd_preexec(worker):
    """In the shepherd before exec: own process group (a terminal's ^C goes to the worker
    only), and DEATH_SIGNAL when the worker dies (it then kills the whole attempt)."""
    return procs.dies_with(worker, DEATH_SIGNAL)


def _child_env(env_extra):
    """The environment of the attempt's processes (and of a --preload zygote)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


class ShepherdTimeout(Exception):
    """_ShepherdHandle.wait's timeout (subprocess.TimeoutExpired, without importing subprocess
    at every command's start: it is needed only when the shepherd is a fresh interpreter)."""


class _ShepherdHandle:
    """The worker's view of an attempt's shepherd: its pid and its report pipe, whose
    `exit N` line and EOF say, without polling, that every process of the attempt is gone
    (the shepherd writes it after its last kill). The part of Popen's interface the attempt
    uses (wait, poll, kill, pid), whether the shepherd is the worker's child or a zygote's."""

    def __init__(self, pid, report_fd, own):
        self.pid, self._fd, self._own = pid, report_fd, own
        self._buf = b""
        self.returncode = None
        self.exited_itself = False

    def fileno(self):
        return self._fd

    def read_line(self, timeout):
        """The shepherd's first line (`pid N` or `error ERRNO REASON`), or b"" if it ended
        without one or said nothing within `timeout` s."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return b""
            try:
                ready, _, _ = select.select([self._fd], [], [], left)
            except InterruptedError:
                continue
            if ready:
                chunk = os.read(self._fd, 4096)
                if not chunk:
                    return b""
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        os.set_blocking(self._fd, False)
        return line

    def poll(self):
        if self.returncode is not None or self._fd is None:
            return self.returncode
        while True:
            try:
                chunk = os.read(self._fd, 4096)
            except BlockingIOError:
                return None
            except OSError:
                chunk = b""
            if not chunk:
                break
            self._buf += chunk
        code = None
        for line in self._buf.split(b"\n"):
            if line.startswith(shepherd.EXIT):
                code = int(line.split()[1])
        # Said `exit N`: it exited on its own, after seeing every process of the attempt gone
        # (DESIGN.md 5.1's proof for an in-place start); killed (OOM), it says nothing.
        self.exited_itself = code is not None
        status = None
        if self._own:
            try:
                _, status = os.waitpid(self.pid, 0)  # exiting now: it closed its pipe
            except ChildProcessError:
                pass
        if code is None:  # killed itself (by the OOM killer, by someone's kill -9)
            died = os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
            code = 128 - died if died < 0 else died
        os.close(self._fd)
        self._fd, self.returncode = None, code
        return code

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ShepherdTimeout(f"the attempt's shepherd did not end within {timeout} s")
            try:
                select.select([self._fd], [], [], left)
            except InterruptedError:
                pass
        return self.returncode

    def kill(self):
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _start_shepherd(cwd, stdio, env, fence_after, zygote=None, fork_here=False):
    """Start the attempt's shepherd, which starts the experiment with the control and result
    pipes passed through, one of three ways (docs/design.md 9.h): forked by the --preload
    `zygote` (the experiment is a fork of it too), forked from this worker when it has one
    thread (with `fork_here`, the experiment is a fork of it too: `run`'s one attempt, from a
    process that imported nothing of the user's), or a fresh interpreter (`python -m
    dbdict_fs.shepherd`). Returns (handle,
    control, result_fd, shepherd_fd, experiment pid), or None when the zygote did not start
    it (nothing of that try is left running: the caller tries another way)."""
    from . import child

    control_r, control_w = os.pipe()
    result_r, result_w = os.pipe()
    shep_r, shep_w = os.pipe()
    report_r, report_w = os.pipe()
    theirs = (control_r, result_w, shep_r, report_w)
    ours = [control_w, result_r, shep_w, report_r]
    proc = None
    try:
        if zygote is not None:
            pid = zygote.fork_attempt((*stdio, *theirs), cwd, env, float(fence_after))
            if pid is not None:
                proc = _ShepherdHandle(pid, report_r, own=False)
        elif procs.thread_count() == 1:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()  # a fork must not carry our unwritten output
            if fork_here:
                drop = child.startup_path()
                start = dict(fork_main=lambda: child.run_forked(control_r, result_w, of_command=True,
                                                                drop_path=drop))
            else:
                start = dict(cmd=child.command(control_r, result_w))
            pid = shepherd.fork_shepherd(shep_r, report_w, float(fence_after), (control_r, result_w), stdio, cwd,
                                         env=env, **start)
            proc = _ShepherdHandle(pid, report_r, own=True)
        else:  # a fork of a threaded process may inherit a lock held forever: a fresh one
            import subprocess

            popen = subprocess.Popen(
                shepherd.command(shep_r, report_w, fence_after, (control_r, result_w),
                                 child.command(control_r, result_w)),
                cwd=cwd, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], env=env,
                pass_fds=theirs, preexec_fn=_shepherd_preexec(os.getpid()), close_fds=True)
            popen.returncode = 0  # reaped through its handle, never by Popen
            proc = _ShepherdHandle(popen.pid, report_r, own=True)
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    line = proc.read_line(60) if proc is not None else b""
    if not line.startswith(shepherd.PID):
        for fd in ours[:3]:
            os.close(fd)  # EOF on the shepherd's pipe: it ends whatever it started
        if proc is not None:
            try:
                proc.wait(30)
            except ShepherdTimeout:
                proc.kill()
        else:
            os.close(report_r)
        if line.startswith(shepherd.ERROR):  # it could not enter the workdir: the job's own damage
            _, code, reason = (line.decode(errors="replace").split(" ", 2) + [""])[:3]
            raise OSError(int(code) if code.isdigit() else errno.EIO, reason, cwd)
        return None
    for fd in ours[:3]:
        os.set_inheritable(fd, False)
    # Non-blocking: a process the experiment forked may hold the pipe's write end open after
    # the experiment itself died, so reads must never wait for an EOF that may not come.
    os.set_blocking(result_r, False)
    os.set_blocking(shep_w, False)  # a ping must never block the worker (a stopped shepherd)
    return proc, os.fdopen(control_w, "w", encoding="utf-8"), result_r, shep_w, int(line.split()[1])


def _spawn_child(cwd, out, err, env_extra, fence_after, preload=None, warn=None, fork_here=False):
    """Start the attempt's shepherd and experiment (see _start_shepherd); unless `preload` is
    None, from this worker's zygote for those modules ("": the default one) when it can,
    else forked from this process with `fork_here` (run_job: never with `preload`).
    Returns (handle, control, result_fd, shepherd_fd, experiment pid); OSError when the
    experiment could not be started."""
    env = _child_env(env_extra)
    with open(os.devnull, "rb") as stdin:
        stdio = (stdin.fileno(), out.fileno(), err.fileno())
        if preload is not None:
            from . import zygote

            started = _start_shepherd(cwd, stdio, env, fence_after,
                                      zygote.for_worker(preload, _child_env({}), warn or _say))
            if started is not None:
                return started
        started = _start_shepherd(cwd, stdio, env, fence_after, fork_here=fork_here)
    if started is None:
        raise OSError(errno.ECHILD, "the experiment's shepherd did not start it")
    return started


def _say(text):
    sys.stderr.write(f"dbdict: {text}\n")
    sys.stderr.flush()


class Child:
    """The worker's handle on the experiment process and its two pipes."""

    def __init__(self, cwd, out, err, env_extra, fence_after=300.0, preload=None, warn=None, fork_here=False):
        self.proc, self._control, self.result_fd, self._shepherd, pid = _spawn_child(
            cwd, out, err, env_extra, fence_after, preload, warn, fork_here)
        self.shepherd = [self.proc.pid, procs.start_ticks(self.proc.pid)]
        self.pid = pid  # the experiment's process, leader of its own process group
        self._buf = b""
        self.eof = False

    def send(self, msg):
        try:
            self._control.write(json.dumps(msg, allow_nan=True) + "\n")
            self._control.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the child is gone: its exit is noticed on the result pipe

    def read_messages(self):
        """Messages available now (the result pipe is non-blocking)."""
        data = b""
        while True:
            try:
                chunk = os.read(self.result_fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            data += chunk
        self._buf += data
        lines = self._buf.split(b"\n")
        self._buf = lines.pop()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def _to_shepherd(self, data):
        if self._shepherd is None:
            return
        try:
            os.write(self._shepherd, data)
        except OSError:
            pass  # gone (its exit is noticed) or not reading (stopped): nothing to wait for

    def ping(self):
        """Tell the experiment and its shepherd that the worker lives (after a heartbeat)."""
        self.send({"op": "ping"})
        self._to_shepherd(shepherd.PING)

    def kill(self):
        """End every process of the attempt: the shepherd kills them all, then exits."""
        self._to_shepherd(shepherd.KILL)
        if getattr(self, "pid", None):
            try:
                os.killpg(self.pid, signal.SIGKILL)  # at once; the shepherd sweeps the rest
            except (ProcessLookupError, PermissionError, OSError):
                pass

    def wait(self, timeout):
        try:
            return self._code(self.proc.wait(timeout))
        except ShepherdTimeout:
            self.kill()
            try:
                return self._code(self.proc.wait(30))
            except ShepherdTimeout:
                self.proc.kill()  # a shepherd that cannot finish (a process stuck in D state)
                return self._code(self.proc.wait())

    @staticmethod
    def _code(code):
        """The shepherd reports a signal death of the experiment as 128 + N."""
        return -(code - 128) if code is not None and code > 128 else code

    def exited(self):
        """Whether the attempt has ended: the shepherd exits once every process is gone."""
        return self.proc.poll() is not None

    def close(self):
        for closer in (self._control.close, lambda: os.close(self.result_fd)):
            try:
                closer()
            except OSError:
                pass
        self.kill()  # anything left goes too
        if self._shepherd is not None:
            os.close(self._shepherd)  # EOF: the shepherd ends the attempt even if "k" was lost
            self._shepherd = None
        try:
            self.proc.wait(5)  # reap it: a long work loop must not collect zombies
        except ShepherdTimeout:
            pass


# ---------------------------------------------------------------- one attempt

def run_job(jobdir, fork_here=False, **options):
    """Book one job and run it once (`dbdict run JOBDIR`). Returns an Outcome.

    A job held by a live worker raises NotRunnable (exit 4): this one-shot command cannot
    judge a lease without waiting, so it only steals from a dead process of this host.
    `fork_here`: the experiment's process is a fork of this one (unless --preload or
    --fresh-interpreter), not a fresh interpreter: only for a process that imported nothing
    of the user's (the `run` command; a notebook calling run_job may hold an old version
    of the experiment's module).
    """
    opts = make_options(**options)
    if not isinstance(jobdir, (str, os.PathLike)):
        raise UsageError(f"jobdir must be a path, not {jobdir!r}")
    jobdir = os.fspath(jobdir)
    if not os.path.isdir(jobdir):
        raise JobNotFound(jobdir, "no such directory")
    modules = opts.zygote("one")
    with StopSignals() as signals, _preloaded(modules, signals, meanwhile=lambda: check_job(jobdir)):
        held = booking.claim(jobdir, lease=opts.lease, heartbeat=opts.heartbeat, wait=False)
        return run_claimed(held, opts, signals, modules,
                           fork_here=fork_here and modules is None and not opts.fresh_interpreter)


def check_job(jobdir, state=None):
    """Refuse a job whose files are damaged before claiming it: nothing is written then.
    `state`: its latest state, when the caller has just read it."""
    config = jd.read_config(jobdir)
    if state is None:
        _, state = jd.read_latest_state(jobdir)
    jd.check_agrees(state, config, jobdir)


def _open_log(path):
    """Append to stdout/stderr: a regular file, never through a symlink, never a FIFO
    (O_NONBLOCK: opening a FIFO would wait, unkillably, for a reader)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO without a reader
            raise OSError(errno.EINVAL, "not a regular file", path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "ab")


def _header(held, run, book):
    return jd.attempt_header(run, held.epoch, book["host"], book["pid"], book["start"]).encode()


def run_claimed(held, opts, signals, zygote_modules=None, fork_here=False):
    """Run the experiment of a job whose claim we won, and commit how it ended; from the
    worker's zygote for `zygote_modules` unless None (see Options.zygote), else forked from
    this process with `fork_here` (see run_job), else in a fresh interpreter."""
    state = copy.deepcopy(held.state)
    book = state["dbdict"]
    if not booking.runnable_after_claim(held):
        booking.give_back(held)
        raise NotRunnable(f"{held.jobdir}: job is {book['status']}")
    attempts = booking.run_attempts(held.jobdir, held.state, held.epoch, held.token)  # command claims never count
    if attempts > opts.max_attempts:
        book.update(status="failed", attempts=attempts - 1,
                    error=f"lost its worker or was killed {attempts - 1} times (max_attempts {opts.max_attempts})")
        return _commit(held, state, ExitCode.FAILED, book["error"])
    paths = jd.JobPaths(held.jobdir)
    book.update(status="running", attempts=attempts, host=held.token["host"], pid=os.getpid(),
                worker=held.token["worker"], cluster_job=held.token["cluster_job"],
                start=booking.utc_iso(), end=None, duration=None, error=None, ended=None,
                runs=int(book.get("runs", 0) or 0) + 1)
    fresh = book.pop("fresh_workdir", None) is True  # requeue --fresh: start from scratch
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if gpus:  # the devices this attempt's experiment sees (a pool's --gpus, a SLURM allocation)
        book["gpus"] = gpus
    else:
        book.pop("gpus", None)
    resume = book["runs"] > 1 and not fresh
    scratch = None
    try:
        # The attempt's own directory (DESIGN.md 5.1), resolved once: the experiment's cwd
        # and any --scratch sync-back use it, never the `workdir` name.
        source = workdir.committed_name(held.jobdir, held.state, held.names)
        if fresh:
            cwd, wname, _ = workdir.prepare_fresh(held, source)
        else:
            cwd, wname, _ = workdir.prepare(held, workdir.clean_start(held), held.keep_alive, source)
        book["workdir"] = wname
        if opts.scratch:
            from .scratch import Scratch

            scratch = Scratch(cwd, opts.scratch, keep_alive=held.keep_alive)
        with _open_log(paths.stdout) as out, _open_log(paths.stderr) as err:
            header = _header(held, book["runs"], book)  # one numbering: the Nth header is run N
            out.write(header)
            err.write(header)
            out.flush()
            err.flush()
            child = Child(scratch.path if scratch else cwd, out, err,
                          {"DBDICT_JOBDIR": os.path.abspath(held.jobdir)}, opts.lease / 2, zygote_modules,
                          fork_here=fork_here)
    except OSError as exc:
        if scratch:
            scratch.remove()
        return _start_failed(held, exc)
    except Fenced:
        if scratch:
            scratch.remove()
        raise
    try:
        book["pgid"] = child.pid
        book["shepherd"] = child.shepherd
        try:
            held.write_state(state)
            if held.overtaken:
                raise Fenced(f"{held.jobdir}: lost: {held.overtaken}")
        except (Fenced, WriteError):
            child.close()
            raise
        if seams.STOP_AFTER_START:
            os.kill(os.getpid(), signal.SIGSTOP)  # test seam: counts "booking -> first state write"
        workdir.commit(held.jobdir, wname, source)
        after_commit(held.jobdir, held.epoch, state)  # running: the older state files go
        init_state = copy.deepcopy(state)
        pruner = None
        if isinstance(book.get("search"), str):  # a trial: searches is imported only then
            from .searches import pruner_for

            pruner = pruner_for(held)  # DESIGN.md 11: its decisions need each point as it is logged
        child.send({"op": "init", "state": init_state, "experiment": book["experiment"],
                    "pythonpath": book.get("pythonpath") or [], "resume": resume,
                    "fence_after": opts.lease / 2, "flush_logs": pruner is not None})
        attempt = _Attempt(held, opts, signals, child, state, scratch)
        attempt.pruner = pruner
        return attempt.loop()
    finally:
        child.close()
        if scratch:
            scratch.remove()


class _Attempt:
    """The worker's event loop while the experiment runs: heartbeats, signals, timers, saves."""

    def __init__(self, held, opts, signals, child, state, scratch):
        self.held, self.opts, self.signals, self.child = held, opts, signals, child
        self.state, self.scratch = state, scratch
        now = booking.boottime()
        self.started = now
        self.stop_deadline = None
        self.kill_reason = None
        self.finish_up_at = now + opts.finish_up_after if opts.finish_up_after is not None else None
        self.next_save = now + opts.save_every if opts.save_every else None
        self.runtime_end = now + opts.max_runtime if opts.max_runtime is not None else None
        self.final = None
        from .histories import Recorder

        self.history = Recorder(held)  # channel.log's points, fenced like the state
        self.pruner, self.pruned = None, None  # a search trial's early stopping (run_claimed)

    def _deadlines(self):
        poll = booking.boottime() + 1.0  # look at the experiment's process at least every second
        return [t for t in (self.held.next_beat, self.stop_deadline, self.finish_up_at, self.next_save,
                            self.runtime_end, poll) if t is not None]

    def loop(self):
        fds = [self.child.result_fd] + ([self.signals.fd] if self.signals.fd is not None else [])
        if self.child.proc.fileno() is not None:  # the shepherd's report pipe: its EOF is the attempt's end
            fds.append(self.child.proc.fileno())
        while True:
            timeout = max(0.0, min(self._deadlines()) - booking.boottime())
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                ready = []
            if self.signals.fd in ready:
                self.signals.drain()
            self._on_signals()
            # exited(): the experiment may be dead while a process it forked keeps the pipe
            # open, so its end is also noticed by polling, not only by EOF. Asked before the
            # read: once every process of the attempt is gone, all they wrote is in the pipe
            # and the read below gets it. Asked after, it could see an exit that came while
            # the read returned, with the last part of a large result still unread.
            exited = self.child.exited()
            if self.child.result_fd in ready or exited:
                for msg in self.child.read_messages():
                    self._on_message(msg)
                if self.held.lost is not None:
                    return self._lost()  # e.g. a save found a newer claim: stop at once
                if self.final is not None or self.child.eof or exited:
                    return self._finish()
            if self._heartbeat():
                return self._lost()
            now = booking.boottime()
            if self.finish_up_at is not None and now >= self.finish_up_at:
                self.finish_up_at = None
                self.child.send({"op": "signal", "value": "finish-up"})
            if self.next_save is not None and now >= self.next_save:
                self.next_save = now + self.opts.save_every
                self.child.send({"op": "signal", "value": "save"})
            if self.runtime_end is not None and now >= self.runtime_end:
                self._kill(f"killed after --max-runtime {self.opts.max_runtime:g}s")
                return self._finish()
            if self.stop_deadline is not None and now >= self.stop_deadline:
                self._kill(f"killed: did not stop within --grace {self.opts.grace:g}s")
                return self._finish()

    def _on_signals(self):
        if not self.signals.stop:
            return
        if self.stop_deadline is None:
            self.stop_deadline = booking.boottime() + self.opts.grace
            self.child.send({"op": "signal", "value": "stop"})
        if self.signals.hard and self.kill_reason is None:
            self._kill("killed at once: a second SIGTERM/SIGINT")

    def _on_message(self, msg):
        op = msg.get("op")
        if op == "save":
            ok = self._commit_save(msg.get("state"))
            self.child.send({"op": "reply", "ok": ok})
        elif op in ("result", "error"):
            self.final = msg
        elif op == "log":
            self.history.append(msg.get("points"))
            if self.pruner and self.pruned is None:
                self.pruned = self.pruner.observe(msg.get("points"))  # the step it decided at
                if self.pruned is not None:  # ignoring 'prune' ends like a cancel, after --grace
                    self.child.send({"op": "signal", "value": "prune"})
                    self.stop_deadline = booking.boottime() + self.opts.grace

    def _changed_config(self, state):
        """A reason when the experiment overwrote a config key (values.changed_config_key)."""
        from .values import changed_config_key

        try:
            return changed_config_key(jd.read_config(self.held.jobdir), state)
        except (CorruptJob, JobNotFound, OSError):
            return None

    def _merge(self, child_state):
        """The experiment's keys, with the worker's bookkeeping (the child cannot change it)."""
        state = dict(child_state) if isinstance(child_state, dict) else dict(self.state)
        state.pop("dbdict", None)
        state["dbdict"] = self.state["dbdict"]  # the worker owns the bookkeeping
        self.history.stamp(state)  # the commit names the history bytes written so far
        return state

    def _commit_save(self, child_state):
        state = self._merge(child_state)
        changed = self._changed_config(state)
        if changed:
            _warn(self.opts, f"{self.held.jobdir}: save refused: {changed}")
            return False
        state["dbdict"]["saved"] = booking.utc_iso()
        try:
            if self.scratch and self.held.check():
                self.sync_back()
            self.held.write_state(state)
        except Fenced:
            return False
        except CorruptJob as exc:
            _warn(self.opts, f"{self.held.jobdir}: could not save: {exc.reason}")
            return False
        except WriteError as exc:
            _warn(self.opts, f"{self.held.jobdir}: could not save: {exc}")
            return False
        self.state = state
        return True

    def _kill(self, reason):
        self.kill_reason = reason
        self.child.kill()

    def _lost(self):
        reason = self.held.fenced()
        self.child.kill()
        return Outcome(self.held.jobdir, "lost", ExitCode.NOT_RUNNABLE,
                       f"{self.held.jobdir}: stopped, this worker no longer holds the job: {reason}",
                       self.held.epoch)

    def _heartbeat(self):
        """Beat when due (the claim keeps the schedule) and ping the child after each beat,
        so it knows its worker lives. True once this worker no longer holds the job."""
        due = booking.boottime() >= self.held.next_beat
        if not self.held.keep_alive():
            return True
        if due:
            self.child.ping()
        return False

    def sync_back(self):
        """Sync the scratch copy back (at a save, at the end) while a thread keeps the claim's
        heartbeat and the shepherd and experiment hearing from us: a sync longer than L/2 (a
        big checkpoint, a slow file server, one stalled call) must not look like a stopped
        worker and time out the experiment's save. The thread stops at our own fence (and
        with every thread of a stopped worker); the copy checks the fence before every file
        and chunk. Raises Fenced."""
        stop = threading.Event()

        def keep():
            while not stop.wait(min(self.held.heartbeat, self.opts.lease / 10)):
                if not self.held.keep_alive():
                    return
                self.child.ping()

        keeper = threading.Thread(target=keep, name="dbdict-sync-keeper", daemon=True)
        self.scratch.keep_alive = lambda: self.held.fenced() is None
        keeper.start()
        try:
            self.scratch.sync_back()
        finally:
            stop.set()
            keeper.join()

    def _wait_child(self, timeout):
        """Wait for the experiment's process to exit, heartbeating (and pinging it) meanwhile:
        a process slow to exit after sending its result must not cost the claim."""
        deadline = booking.boottime() + timeout
        while True:
            now = booking.boottime()
            try:
                return self.child._code(self.child.proc.wait(max(0.0, min(self.held.next_beat, deadline) - now)))
            except ShepherdTimeout:
                pass
            now = booking.boottime()
            if now >= deadline:
                return self.child.wait(0)  # kills its process group, then reaps it
            if self._heartbeat():
                return _LOST

    def _finish(self):
        """The experiment ended (returned, raised, crashed or was killed): commit the end."""
        code = self._wait_child(10 if self.final else 1)
        if code is _LOST or not self.held.check():
            return self._lost()
        if self.scratch:
            try:
                self.sync_back()
            except Fenced:
                return self._lost()
        msg = self.final or {}
        state = self._merge(msg.get("state"))
        changed = self._changed_config(state) if msg.get("op") == "result" else None
        if changed:  # fail the job, keeping the config's values in its state (and the index)
            state = self._merge(None) if not isinstance(msg.get("state"), dict) else state
            state.update({k: v for k, v in jd.read_config(self.held.jobdir).items() if k != "dbdict"})
            msg = {"op": "error", "error": changed}
        book = state["dbdict"]
        now = booking.boottime()
        book.update(end=booking.utc_iso(), duration=round(now - self.started, 3))
        book.pop("pgid", None)
        book.pop("shepherd", None)
        # The shepherd exits on its own only once every process of the attempt is gone; one
        # killed by a signal (the OOM killer) may have left a setsid daemon writing in our
        # directory. Only the first proves that the next attempt may start in place (5.1).
        book["ended"] = self.held.epoch if self.child.proc.exited_itself else None
        if self.pruned is not None and msg.get("op") != "error":  # final: never retried (DESIGN.md 11)
            book.update(status="pruned", returned=msg.get("returned"), pruned_at_step=self.pruned,
                        error=self.kill_reason)
            return _commit(self.held, state, ExitCode.OK, f"{self.held.jobdir}: pruned at step {self.pruned}")
        if msg.get("op") == "result" and msg.get("returned") == "complete":
            book.update(status="done", returned="complete")
            return _commit(self.held, state, ExitCode.OK, f"{self.held.jobdir}: done")
        if msg.get("op") == "result":
            resumes = int(book.get("resumes", 0) or 0) + 1
            book.update(returned="incomplete", resumes=resumes)
            if self.opts.max_resumes is not None and resumes > self.opts.max_resumes:
                book.update(status="failed", error=f"returned INCOMPLETE {resumes} times "
                                                   f"(max_resumes {self.opts.max_resumes})")
                return _commit(self.held, state, ExitCode.FAILED, f"{self.held.jobdir}: failed: {book['error']}")
            book.update(status="ready", priority=float(self.opts.restart_priority), requeue_epoch=self.held.epoch)
            return _commit(self.held, state, ExitCode.INCOMPLETE, f"{self.held.jobdir}: incomplete, requeued")
        if msg.get("op") == "error":
            book.update(status="failed", error=msg.get("error") or "the experiment raised")
            return _commit(self.held, state, ExitCode.FAILED, f"{self.held.jobdir}: failed: {book['error']}")
        # No result: the child was killed (by us or by something else) or exited early.
        reason = self.kill_reason or _death(code)
        book.update(error=reason, returned=None)
        if book["attempts"] >= self.opts.max_attempts:
            book.update(status="failed", error=f"{reason} (attempt {book['attempts']} of max_attempts "
                                               f"{self.opts.max_attempts})")
            return _commit(self.held, state, ExitCode.FAILED, f"{self.held.jobdir}: failed: {book['error']}")
        book.update(status="ready")
        return _commit(self.held, state, ExitCode.INCOMPLETE, f"{self.held.jobdir}: {reason}; requeued")


def _start_failed(held, exc):
    """An attempt could not start. A full disk or read-only tree fails every job alike: raise
    (the worker stops; the claim is recovered after its lease). Anything else is this job's
    own damage (a stdout that is a symlink or a FIFO, a workdir that is a file): the job is
    failed with the reason, under the claim already held, so no worker trips on it again."""
    reason = f"cannot start the attempt: {exc.strerror or exc}"
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        raise WriteError(f"{held.jobdir}: {reason}") from exc
    state = copy.deepcopy(held.state)
    state["dbdict"].update(status="failed", error=reason)
    return _commit(held, state, ExitCode.FAILED, f"{held.jobdir}: failed: {reason}")


def _death(code):
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"the experiment process was killed by {name}"
    return f"the experiment process exited with code {code} without returning"


def _commit(held, state, exit_code, message):
    """Write the attempt's final state under the claim; its outcome (or why it could not)."""
    status = state["dbdict"]["status"]
    try:
        try:
            held.write_state(state)
        except CorruptJob as exc:
            # The experiment's results cannot be stored (too large): keep the state the
            # attempt started from, so the job stays readable, and say why it failed.
            status, exit_code = "failed", ExitCode.FAILED
            message = f"{held.jobdir}: failed: the experiment's state cannot be stored: {exc.reason}"
            book = dict(state["dbdict"], status=status, error=message.split(": failed: ", 1)[1])
            state = dict(copy.deepcopy(held.state), dbdict=book)
            held.write_state(state)
    except Fenced as exc:
        return Outcome(held.jobdir, "lost", ExitCode.NOT_RUNNABLE, str(exc), held.epoch)
    except WriteError as exc:
        return Outcome(held.jobdir, "error", ExitCode.USAGE,
                       f"{exc}; the job was not marked {status} and will be retried after its lease",
                       held.epoch)
    if held.overtaken:  # a newer claim was made before our rename landed: never say `done`
        return Outcome(held.jobdir, "lost", ExitCode.NOT_RUNNABLE,
                       f"{held.jobdir}: lost: {held.overtaken}", held.epoch)
    after_commit(held.jobdir, held.epoch, state)  # older states out; final mark or priority hint
    return Outcome(held.jobdir, status, exit_code, message, held.epoch)


def _warn(opts, text):
    if not opts.quiet:
        sys.stderr.write(f"dbdict: {text}\n")
        sys.stderr.flush()


# ---------------------------------------------------------------- the worker loop

def scan(tree, select_rows=None):
    """Candidates of one pass: (path, status, priority) of every job not final.

    The index (with its cache, so a `--wait` worker's re-scan of an unchanged tree opens
    almost nothing) gives the rows; `select_rows(tree)`, from the query filters, may
    narrow them. Every candidate is judged again on fresh reads when it is claimed.
    """
    if select_rows is None:
        from .query import select

        select_rows = select
    return [(r["dbdict.path"], r.get("dbdict.status"), r.get("dbdict.priority") or 0.0)
            for r in select_rows(tree) if r.get("dbdict.status") not in booking.FINAL + ("corrupt",)]


def work(tree, *, max_jobs=None, wait=False, poll=None, select_rows=None, on_outcome=None, **options):
    """Book runnable jobs of `tree` and run them until none is left.

    Without filters, jobs are found by `discovery` (a random walk that skips jobs marked
    final, DESIGN.md 4.1): no per-booking scan, so a booking costs the same at 1k and 1M
    jobs. With `select_rows` (the query filters), candidates come from the index, sorted by
    priority tree-wide. With `wait`, polls (with back-off and jitter) while jobs are
    running elsewhere, so it can take over the jobs of workers that die. Returns counts
    per outcome status.
    """
    opts = make_options(**options)
    if not isinstance(tree, (str, os.PathLike)):
        raise UsageError(f"tree must be a path, not {tree!r}")
    tree = os.fspath(tree)
    if not os.path.isdir(tree):
        raise UsageError(f"{tree}: no such directory")
    if max_jobs is not None and (isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1):
        raise UsageError(f"--max-jobs must be a whole number >= 1, not {max_jobs!r}")
    poll = poll if poll is not None else min(opts.heartbeat, 10.0)
    loop = _WorkLoop(tree, opts, max_jobs, select_rows, on_outcome)
    with StopSignals() as signals, _preloaded(opts.zygote("many"), signals):
        loop.signals = signals
        backoff = poll / 4
        full = True  # the next pass walks the whole tree (else: held jobs and one directory)
        limit, passes = seams.MAX_PASSES, 0  # test seam: counted passes
        while not loop.done() and not (limit and passes >= limit):
            passes += 1
            loop.observer.ask_scheduler()  # scheduler-gone fast path: one squeue call per pass
            progressed, seen_any = loop.one_pass(full)
            if not progressed and loop.discovery is not None and not loop.done():
                from .searches import serve  # DESIGN.md 11: nothing runnable, so ask a search

                progressed, pending = serve(loop)
                seen_any = seen_any or pending
            if progressed:
                backoff, full = poll / 4, True
                continue
            if not wait or (full and not seen_any):
                break  # nothing runnable (and, for --wait, nothing running either)
            if loop.discovery is not None and not loop.discovery.held and not full:
                full = True  # every job we watched has ended: one more walk decides
                continue
            import random  # not at import: `run` never waits for work

            _sleep(signals, backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, poll)
            full = loop.discovery is None
    if signals.stop:
        loop.counts["interrupted"] = 1
    return loop.counts


@contextlib.contextmanager
def _preloaded(modules, signals, meanwhile=None):
    """This worker's zygote (unless --fresh-interpreter), started, then `meanwhile()` run while
    it starts, then its readiness waited for before the first claim, so no lease runs
    meanwhile: --preload's imports as long as they take, the default zygote's start (an
    interpreter, nothing imported) a bounded time, after which attempts start in a fresh
    interpreter until it is ready. Ended with the worker (`work`, or `run`'s one attempt).
    `modules`: Options.zygote's answer."""
    if modules is None:
        if meanwhile is not None:
            meanwhile()
        yield
        return
    from . import zygote

    z = zygote.for_worker(modules, _child_env({}), _say)
    try:
        if z.sock is None and not z.refused:
            z.start()
        if meanwhile is not None:
            meanwhile()
        z.wait_ready(zygote.START_TIMEOUT if modules else zygote.DEFAULT_START_WAIT, also=signals.fd)
        if z.import_error:
            raise UsageError(f"--preload: {z.import_error}")
        yield
    finally:
        zygote.close_all()


class _WorkLoop:
    """The state of one `work` call: what it found, what it ran, what it said."""

    def __init__(self, tree, opts, max_jobs, select_rows, on_outcome):
        self.tree, self.opts, self.max_jobs = tree, opts, max_jobs
        self.select_rows, self.on_outcome = select_rows, on_outcome
        self.identity = booking.Identity.current()
        self.observer = booking.Observer(self.identity)
        self.discovery = None if select_rows else Discovery(tree)
        # path -> reason: jobs check_job refused (said once, never waited for); the walk skips them
        self.damaged = self.discovery.damaged if self.discovery else {}
        self.counts = {}
        self.ran = 0
        self.signals = None

    def done(self):
        return self.signals.stop or (self.max_jobs is not None and self.ran >= self.max_jobs)

    def _candidates(self, full):
        """(path, first) pairs: first = (listing, state) already read, or None."""
        if self.discovery is None:
            import random

            rows = [c for c in scan(self.tree, self.select_rows) if c[0] not in self.damaged]
            random.shuffle(rows)  # ties in priority go to different workers
            rows.sort(key=lambda c: -(c[2] if isinstance(c[2], (int, float)) else 0.0))
            return [(path, None) for path, _, _ in rows], bool(rows)
        if full:
            found = self.discovery.walk()
        else:
            found = itertools.chain(self.discovery.watched(), self.discovery.slow_walk())
        return ((path, (listing, state)) for path, listing, state in found), None

    def one_pass(self, full):
        """Try every candidate of one pass. Returns (ran something, saw a job still to end)."""
        candidates, seen_any = self._candidates(full)
        progressed = False
        for path, first in candidates:
            if self.done():
                break
            progressed = self.ran_one(self._try(path, first)) or progressed
        if self.discovery is not None:
            seen_any = bool(self.discovery.held)  # jobs running elsewhere, to watch
        return progressed, seen_any

    def ran_one(self, outcome):
        """Count an attempt's outcome (None: the job was not ours to run). True if it ran."""
        if outcome is None:
            return False
        self.ran += 1
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
        if self.on_outcome:
            self.on_outcome(outcome)
        return True

    def _try(self, path, first):
        """Book and run one candidate; None when it was not ours to run."""
        disc = self.discovery
        if first is not None and isinstance(first[1], Exception):
            self._damaged(path, first[1])
            return None
        try:
            check_job(path, first[1] if first else None)
        except (CorruptJob, JobNotFound) as exc:
            self._damaged(path, exc)
            return None
        try:
            held = booking.claim(path, identity=self.identity, observer=self.observer, lease=self.opts.lease,
                                 heartbeat=self.opts.heartbeat, wait=True, first=first)
        except NotRunnable:
            if disc is not None:
                disc.saw_held(path)  # held (or just taken): watched while --wait polls
            return None
        except (CorruptJob, JobNotFound):
            return None
        if disc is not None:
            disc.taken(path)
        try:
            outcome = run_claimed(held, self.opts, self.signals, self.opts.zygote("many"))
        except NotRunnable:
            return None
        except Fenced as exc:
            return Outcome(path, "lost", ExitCode.NOT_RUNNABLE, str(exc), held.epoch)
        except WriteError as exc:
            # A full disk or a read-only tree fails every job alike: stop, loudly.
            raise WriteError(f"{exc}; worker stopped") from exc
        return outcome

    def _damaged(self, path, exc):
        if path in self.damaged:
            return
        self.damaged[path] = str(exc)
        _warn(self.opts, f"skipping a damaged job: {exc}")


def _sleep(signals, seconds):
    """Sleep, but wake at once on a stop signal."""
    if signals.fd is None:
        time.sleep(seconds)
        return
    try:
        select.select([signals.fd], [], [], seconds)
    except InterruptedError:
        pass
    signals.drain()
