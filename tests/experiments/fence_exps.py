"""Experiments for tests/test_fence.py: checkpoints in flight, daemons, long C calls."""

import os
import subprocess
import sys
import time


def _mark(state, name, text=""):
    with open(os.path.join(state.ctl, name), "w") as f:
        f.write(text)


def ckpt_in_flight(state, channel):
    """The first attempt writes ckpt.tmp, then waits for ctl/go before renaming it to ckpt
    (a checkpoint in flight while its worker is stopped). Later attempts write ckpt at once."""
    if not os.path.exists(os.path.join(state.ctl, "A-started")):
        with open("ckpt.tmp", "w") as f:
            f.write("A")
        _mark(state, "A-started", str(os.getpid()))
        go = os.path.join(state.ctl, "go")
        while not os.path.exists(go):  # a busy wait: on SIGCONT this thread renames at once,
            pass                       # before the child's own L/2 watchdog thread can run
        os.rename("ckpt.tmp", "ckpt")  # relative: lands in this attempt's own directory
        _mark(state, "A-renamed")
        time.sleep(30)
        return
    with open("ckpt.tmp", "w") as f:
        f.write("B")
    os.rename("ckpt.tmp", "ckpt")
    state.result = "B"


def daemon(state, channel):
    """Starts a setsid'd daemon that appends to daemon.log for ever, then sleeps or returns."""
    code = "import time\nwhile True:\n    open('daemon.log', 'a').write('x')\n    time.sleep(0.05)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    _mark(state, "daemon.pid", str(proc.pid))
    if state.get("sleep"):
        time.sleep(state.sleep)
    state.result = "ok"


def long_c_call(state, channel):
    """Holds its GIL in one C call for a long time (sum over a huge range)."""
    _mark(state, "exp.pid", str(os.getpid()))
    sum(range(10 ** 11))
