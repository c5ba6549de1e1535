"""The per-attempt shepherd (DESIGN.md 5.2): every process of an attempt ends with it.

A small process between the worker and the experiment. It is a child subreaper, so
whatever the experiment starts (setsid daemons included) is adopted by it once its parent
exits, and it runs no experiment code, so no GIL held by a long C call can delay it. It
kills every process of the attempt (the experiment's process group, and all its
descendants found through /proc ppid chains) when

* the worker dies (PR_SET_PDEATHSIG, and EOF on the worker's pipe),
* the worker's pings stop for the fence time (L/2 on CLOCK_BOOTTIME: a SIGSTOPped worker),
* the worker orders it (`k`: max-runtime, cancel, fence, grace expired),
* the experiment's own process exits (nothing it started outlives the attempt),

and exits only once they are all gone, with the experiment's exit status (128 + N when it
was killed by signal N). Its pid and start ticks are in the attempt's state (`shepherd`), so
the same-host fast path treats the holder as gone only when the shepherd is gone too.

It writes `pid <experiment pid>` on REPORT_FD once the experiment is started (or `error
<errno> <reason>` when it cannot start it), and `exit <code>` just before it exits; the EOF
that follows tells the worker, without polling, that every process of the attempt is gone.

Two ways to start it (docs/design.md 9.h):

* `fork_shepherd()`: a fork of a single-threaded process (the worker itself, or a worker's
  preload zygote), which never runs the worker's code again: no interpreter start. With
  `fork_main`, the experiment's process is a fork of the shepherd too (the zygote's
  preloaded modules come with it); without, it is a fresh interpreter (`cmd`).
* `python -m dbdict_fs.shepherd CTL_FD REPORT_FD FENCE_AFTER PASS_FDS -- CMD...`: a fresh
  interpreter, for a worker that has threads (a fork of it could inherit a lock held by
  another thread, forever).
"""

import gc
import os
import select
import signal
import sys
import time

from . import seams
from .procs import PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG, boottime, prctl, processes

DEATH_SIGNAL = signal.SIGHUP  # what the worker's death sends us (and us dying, the experiment)


def attempt_processes(root, pgid):
    """Live (non-zombie) pids descending from `root` (not itself) or in process group `pgid`."""
    procs = processes()
    children = {}
    for pid, (_, ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, ()))
    found.update(pid for pid, (_, _, g) in procs.items() if g == pgid)
    found.discard(root)
    return [pid for pid in found if procs.get(pid, (b"Z",))[0] not in (b"Z", b"X")]


def test_stop(step):
    """Test seam (seams.STOP_AT, DBDICT_TEST_STOP_AT=<step>:<marker>[,...]): the process that
    reaches <step> of an attempt's start writes <marker> (its pid) and SIGSTOPs, once per marker:
    `zygote-request` (the zygote got a request, before it forks), `shepherd-forked` (a forked
    shepherd, before it starts the experiment), `experiment-started` (the shepherd, after it
    started the experiment, before it reports its pid), `experiment-forked` (an experiment
    forked from a zygote, before it runs anything). A start killed exactly there."""
    for where, marker in seams.STOP_AT:
        if where == step:
            seams.stop_here(marker)


def _close_fds_except(keep):
    """Close every descriptor but `keep`: a fork inherits all of its parent's (a worker's
    claim files, pipes of other attempts, the zygote's socket), and must hold none of them."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = range(3, 1024)
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _after_fork(parent, keep):
    """In a fork that will be a process of the attempt: its own process group, DEATH_SIGNAL
    when `parent` dies, no signal handler or wakeup fd of the process it was forked from,
    none of its descriptors but `keep`."""
    os.setpgid(0, 0)
    prctl(PR_SET_PDEATHSIG, DEATH_SIGNAL)
    if os.getppid() != parent:
        os._exit(70)  # the parent died before prctl took effect
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        try:
            if signal.getsignal(sig) not in (signal.SIG_DFL, None):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    _close_fds_except(set(keep))


def fork_shepherd(ctl_fd, report_fd, fence_after, pass_fds, stdio, cwd, *, cmd=None, fork_main=None, env=None):
    """Fork a shepherd from this (single-threaded) process; return its pid.

    The fork never comes back here: it becomes the attempt's shepherd (DEATH_SIGNAL when
    this process dies, its own process group, a child subreaper), with `stdio` as its
    0, 1, 2 and `cwd` as its directory, and starts the experiment: `cmd` (a fresh
    interpreter) or `fork_main()` in a fork of itself, with `env` as its environment."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        gc.freeze()  # the objects of the process we were forked from are never finalized here
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        _after_fork(parent, {0, 1, 2, ctl_fd, report_fd, *pass_fds})
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        try:
            os.chdir(cwd)
        except OSError as exc:
            _report(report_fd, ERROR, f"{exc.errno or 0} {exc.strerror or exc}")
            os._exit(71)
        test_stop("shepherd-forked")
        code = Shepherd(ctl_fd, report_fd, fence_after, pass_fds, cmd, fork_main=fork_main, env=env).run()
    except BaseException as exc:  # noqa: BLE001 - never return into the forked caller's code
        try:
            os.write(2, f"dbdict: the attempt's shepherd failed: {exc!r}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(code)


# Both ends of the shepherd's pipes, spelled here only. Worker -> shepherd, one byte each:
PING = b"p"  # the worker lives (after each heartbeat)
KILL = b"k"  # end every process of the attempt, then exit
# Shepherd -> worker, one line each: PID first (the experiment started) or ERROR (it could
# not: `error ERRNO REASON`), EXIT last (every process of the attempt is gone).
PID, EXIT, ERROR = b"pid ", b"exit ", b"error "


def command(ctl_fd, report_fd, fence_after, pass_fds, cmd):
    """The argv of a shepherd in a fresh interpreter (what `main` reads), running `cmd`."""
    safe = ["-P"] if sys.version_info >= (3, 11) else []  # no cwd (the shared workdir) on sys.path
    return [sys.executable, *safe, "-m", "dbdict_fs.shepherd", str(ctl_fd), str(report_fd),
            repr(float(fence_after)), ",".join(str(fd) for fd in pass_fds), "--", *cmd]


def _report(fd, word, text):
    try:
        os.write(fd, word + f"{text}\n".encode())
    except OSError:
        pass  # the worker is gone: its death ends the attempt anyway


class Shepherd:
    def __init__(self, ctl_fd, report_fd, fence_after, pass_fds, cmd, fork_main=None, env=None):
        self.ctl_fd, self.report_fd, self.fence_after = ctl_fd, report_fd, fence_after
        self.pass_fds, self.cmd = pass_fds, cmd
        self.fork_main, self.env = fork_main, env
        self.exp_pid = None
        self.exp_status = None  # os.waitpid status of the experiment's process

    def start(self):
        self.me = os.getpid()
        self.exp_pid = self._fork_experiment()
        for fd in self.pass_fds:
            os.close(fd)  # only the experiment holds them: the worker sees their EOF
        test_stop("experiment-started")
        _report(self.report_fd, PID, self.exp_pid)

    def _fork_experiment(self):
        """The experiment's process: a fork of this process that runs `fork_main` (a zygote's
        fork: its preloaded modules come with it) or execs `cmd`, with the environment,
        descriptors and signals a fresh interpreter would have. Its pid is known at once:
        the worker goes on (commits `running`) while the experiment's interpreter starts."""
        pid = os.fork()
        if pid:
            return pid
        code = 70
        try:
            _after_fork(self.me, {0, 1, 2, *self.pass_fds})
            # As the experiment always found them: the stop signals ignored (ours, inherited
            # through exec) until dbdict_fs.child ignores them itself, so a scheduler's
            # signal during its start cannot kill it; SIGPIPE and SIGXFSZ as Python sets them.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
                        signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_IGN)
            for fd in self.pass_fds:
                os.set_inheritable(fd, True)
            if self.fork_main is None:
                code = 127
                os.execve(self.cmd[0], self.cmd, self.env if self.env is not None else os.environ)
            if self.env is not None:
                os.environ.clear()
                os.environ.update(self.env)
            test_stop("experiment-forked")
            code = self.fork_main()
        except BaseException as exc:  # noqa: BLE001 - never return into the shepherd's code
            try:
                os.write(2, f"dbdict: the experiment's process failed to start: {exc!r}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(code)

    def _reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.exp_pid:
                self.exp_status = status

    def _none_left(self):
        """Reap; True when no process of the attempt can be left, told by two system calls
        instead of a read of /proc: we have no child at all (whatever the experiment started
        and left is adopted by us, a subreaper, so a live descendant means a child of ours)
        and its process group is empty."""
        self._reap()
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid = None
        if pid is not None:  # a child of ours still runs (or has just ended: look again)
            if pid == self.exp_pid:
                self.exp_status = status
            return False
        try:
            os.killpg(self.exp_pid, 0)
            return False
        except ProcessLookupError:
            return True
        except PermissionError:
            return False

    def kill_all(self):
        """SIGKILL every process of the attempt until none is left (they may fork meanwhile).
        A process that survives SIGKILL for a while (in D state: a hung NFS mount) is looked
        at again after 5 ms, then 10, 20, ... at most every second: no spinning."""
        pause = 0.005
        while True:
            if self._none_left():
                return
            pids = attempt_processes(self.me, self.exp_pid)
            if not pids:
                self._reap()
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(pause)  # let the kernel finish the kills before we look again
            pause = min(pause * 2, 1.0)

    def run(self):
        """Watch until the attempt must end; end it; return our exit code."""
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        self.died = False

        def on_death(signum, frame):
            self.died = True

        signal.signal(DEATH_SIGNAL, on_death)
        signal.signal(signal.SIGCHLD, lambda s, f: None)  # wakes select() through wake_r
        # The worker decides what a stop signal means (it tells the experiment to checkpoint).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        # PR_SET_PDEATHSIG was set by the worker before exec (it survives exec).
        self.start()
        last_ping = boottime()
        reason = None
        while reason is None:
            self._reap()
            if self.exp_status is not None:
                break  # the experiment ended: nothing it started may outlive it
            if self.died:
                reason = "the worker died"
                break
            left = last_ping + self.fence_after - boottime()
            if left <= 0:
                reason = "no word from the worker for half the lease (stopped or hung)"
                break
            try:
                ready, _, _ = select.select([self.ctl_fd, wake_r], [], [], min(left, 1.0))
            except InterruptedError:
                continue
            if wake_r in ready:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            if self.ctl_fd in ready:
                try:
                    data = os.read(self.ctl_fd, 4096)
                except OSError:
                    data = b""
                if not data:
                    reason = "the worker went away"
                elif KILL in data:
                    reason = "ordered by the worker"
                else:
                    last_ping = boottime()
        if reason:
            try:
                os.write(2, f"dbdict: experiment killed: {reason}\n".encode())
            except OSError:
                pass
        self.kill_all()
        while self.exp_status is None:  # killed above: it is our child, reap it
            try:
                pid, status = os.waitpid(self.exp_pid, 0)
                self.exp_status = status
            except ChildProcessError:
                self.exp_status = 0
        code = os.waitstatus_to_exitcode(self.exp_status)
        code = 128 - code if code < 0 else min(code, 255)
        _report(self.report_fd, EXIT, code)  # every process is gone: the worker may go on
        return code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    ctl_fd, report_fd, fence_after = int(argv[0]), int(argv[1]), float(argv[2])
    pass_fds = tuple(int(x) for x in argv[3].split(",") if x)
    cmd = argv[argv.index("--") + 1:]
    return Shepherd(ctl_fd, report_fd, fence_after, pass_fds, cmd).run()


if __name__ == "__main__":
    sys.exit(main())
