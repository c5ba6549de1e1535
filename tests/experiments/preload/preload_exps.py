"""Experiments of tests/test_preload.py: what a preloaded module looks like to each attempt."""

import os
import sys


def bump(state, channel):
    """Records the preloaded global as this attempt found it, then changes it."""
    import preload_state

    state.seen = preload_state.COUNTER
    state.imported_in = preload_state.IMPORTED_IN
    state.pid = os.getpid()
    state.cwd = os.getcwd()
    state.jobdir_env = os.environ.get("DBDICT_JOBDIR")
    preload_state.COUNTER += 1
    print("out", flush=True)
    print("err", file=sys.stderr, flush=True)


def threaded(state, channel):
    import preload_threads

    state.imported_in = preload_threads.IMPORTED_IN
    state.pid = os.getpid()


def signals(state, channel):
    """The signal dispositions the experiment finds (the same with and without --preload)."""
    import signal

    def name(handler):
        return {signal.SIG_IGN: "ign", signal.SIG_DFL: "dfl"}.get(handler, "handler")

    state.signals = {s.name: name(signal.getsignal(s)) for s in (
        signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGPIPE,
        signal.SIGXFSZ, signal.SIGCHLD, signal.SIGALRM, signal.SIGQUIT)}
    state.pgid_is_pid = os.getpgid(0) == os.getpid()


def blas(state, channel):
    """Whether numpy came preloaded, and a matrix product through its BLAS (threads again)."""
    state.preloaded = "numpy" in sys.modules  # before this attempt imports it
    import numpy as np

    a = np.ones((300, 300))
    state.total = float((a @ a).sum())
    state.threads = len(os.listdir("/proc/self/task"))


def how_started(state, channel):
    """How this attempt's process was started, and whether an earlier attempt's change to a
    module every experiment has (json) reached it."""
    import json

    state.seen = getattr(json, "_dbdict_test_seen", 0)
    json._dbdict_test_seen = state.seen + 1
    state.pid = os.getpid()
    with open("/proc/self/comm") as f:
        state.comm = f.read().strip()
    with open("/proc/self/cmdline", "rb") as f:
        state.fresh = b"dbdict_fs.child" in f.read()
    state.cwd = os.getcwd()
    state.sys_path = list(sys.path)
    state.unbuffered = [getattr(s, "write_through", None) for s in (sys.stdout, sys.stderr)]
    try:
        import beside_the_command  # noqa: F401 - a module in the cwd of the command that started us
        state.beside = True
    except ImportError:
        state.beside = False
    print("out", flush=True)
