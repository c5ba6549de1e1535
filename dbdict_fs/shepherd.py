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

Run as `python -m dbdict_fs.shepherd CTL_FD REPORT_FD FENCE_AFTER PASS_FDS -- CMD...`:
it writes `pid <experiment pid>` on REPORT_FD once the experiment is started.
"""

import ctypes
import os
import select
import signal
import subprocess
import sys
import time

from .booking import proc_stat_fields

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
DEATH_SIGNAL = signal.SIGHUP  # what the worker's death sends us (and us dying, the experiment)


def _boottime():
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _prctl(option, value):
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        return -1


def _processes():
    """pid -> (state, ppid, pgid) of every process in /proc."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = proc_stat_fields(name)
        if fields and len(fields) > 2:
            try:
                out[int(name)] = (fields[0], int(fields[1]), int(fields[2]))
            except ValueError:
                continue
    return out


def attempt_processes(root, pgid):
    """Live (non-zombie) pids descending from `root` (not itself) or in process group `pgid`."""
    procs = _processes()
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


class Shepherd:
    def __init__(self, ctl_fd, report_fd, fence_after, pass_fds, cmd):
        self.ctl_fd, self.report_fd, self.fence_after = ctl_fd, report_fd, fence_after
        self.pass_fds, self.cmd = pass_fds, cmd
        self.exp_pid = None
        self.exp_status = None  # os.waitpid status of the experiment's process

    def _preexec(self):
        """In the experiment before exec: its own process group, SIGHUP when we die."""
        os.setpgid(0, 0)
        _prctl(_PR_SET_PDEATHSIG, DEATH_SIGNAL)
        if os.getppid() != self.me:
            os._exit(70)

    def start(self):
        self.me = os.getpid()
        proc = subprocess.Popen(self.cmd, pass_fds=self.pass_fds, preexec_fn=self._preexec,
                                close_fds=True)
        proc.returncode = 0  # we reap it ourselves (waitpid(-1)); Popen must not try
        self.exp_pid = proc.pid
        for fd in self.pass_fds:
            os.close(fd)  # only the experiment holds them: the worker sees their EOF
        try:
            os.write(self.report_fd, f"pid {self.exp_pid}\n".encode())
        except OSError:
            pass

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

    def kill_all(self):
        """SIGKILL every process of the attempt until none is left (they may fork meanwhile)."""
        while True:
            self._reap()
            pids = attempt_processes(self.me, self.exp_pid)
            if not pids:
                self._reap()
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.005)  # let the kernel finish the kills before we look again

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
        last_ping = _boottime()
        reason = None
        while reason is None:
            self._reap()
            if self.exp_status is not None:
                break  # the experiment ended: nothing it started may outlive it
            if self.died:
                reason = "the worker died"
                break
            left = last_ping + self.fence_after - _boottime()
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
                elif b"k" in data:
                    reason = "ordered by the worker"
                else:
                    last_ping = _boottime()
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
        return 128 - code if code < 0 else min(code, 255)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    ctl_fd, report_fd, fence_after = int(argv[0]), int(argv[1]), float(argv[2])
    pass_fds = tuple(int(x) for x in argv[3].split(",") if x)
    cmd = argv[argv.index("--") + 1:]
    return Shepherd(ctl_fd, report_fd, fence_after, pass_fds, cmd).run()


if __name__ == "__main__":
    sys.exit(main())
