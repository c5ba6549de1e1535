"""Linux process facts every part of an attempt shares: the clock the fence counts on,
what /proc says of a process, prctl, and the preexec that ties a child to its parent.

One copy each, so the worker, the shepherd, the zygote, the pool and the experiment's child
judge processes and time the same way. Imports nothing of the package (the shepherd and
the child import it in processes that must start fast); ctypes is imported when used.
"""

import os
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def boottime():
    """Seconds on CLOCK_BOOTTIME: keeps counting through SIGSTOP and suspend, never jumps."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def set_name(name):
    """Set this process's name as `ps -o comm` and top show it (at most 15 bytes): a forked
    process keeps its parent's command line, so the name is what tells it apart."""
    try:
        with open("/proc/self/comm", "w", encoding="ascii") as f:
            f.write(name[:15])
    except OSError:
        pass


def prctl(option, value):
    """prctl(option, value); -1 where it is not available (not Linux)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        return -1


def stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    try:
        return data[data.rindex(b")") + 2:].split()
    except ValueError:
        return None


def start_ticks(pid):
    """Field 22 of /proc/<pid>/stat: tells a pid from a later process that reused it."""
    fields = stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (ValueError, IndexError):
        return None


def alive(pid, ticks):
    """Whether process `pid` (started at `ticks`, when given) runs. A zombie (a dead worker
    that an init which never reaps left behind) is dead: it can neither heartbeat nor write."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    fields = stat_fields(pid)
    if not fields or fields[0] in (b"Z", b"X"):
        return False
    now = start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


def processes():
    """pid -> (state, ppid, pgid) of every process in /proc."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = stat_fields(name)
        if fields and len(fields) > 2:
            try:
                out[int(name)] = (fields[0], int(fields[1]), int(fields[2]))
            except ValueError:
                continue
    return out


def group_alive(pgid):
    """Whether a process group has a live (non-zombie) member. Zombies left unreaped by a
    container's init must not keep a dead worker's job from being recovered."""
    if not isinstance(pgid, int) or pgid <= 1:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(g == pgid and state not in (b"Z", b"X") for state, _, g in processes().values())


def children(pid=None):
    """Pids of the children of `pid` (default: this process), live or zombie."""
    pid = os.getpid() if pid is None else pid
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return [p for p, (_, ppid, _) in processes().items() if ppid == pid]


def thread_count():
    """Threads of this process, Python's or not (a C library's), from /proc."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def dies_with(parent, signum):
    """A preexec_fn: the child gets its own process group (a terminal's Ctrl-C reaches the
    parent only) and `signum` when `parent` dies; it exits 70 at once if the parent died
    before prctl took effect (nobody else would tell it)."""
    def preexec():
        os.setpgid(0, 0)
        prctl(PR_SET_PDEATHSIG, signum)  # not Linux: the parent's pipes still end the child
        if os.getppid() != parent:
            os._exit(70)
    return preexec
