"""Experiments for tests/test_fence.py: checkpoints in flight, daemons, long C calls."""

import os
import subprocess
import sys
import time


def _mark(state, name, text=""):
    with open(os.path.join(state.ctl, name), "w") as f:
        f.write(text)


def ckpt_in_flight(state, channel):
    """The first attempt writes ckpt.tmp; a forked helper of it (no threads, so no watchdog)
    renames it to ckpt only once ctl/go exists: a checkpoint in flight while the attempt is
    stopped. Later attempts write ckpt at once."""
    if not os.path.exists(os.path.join(state.ctl, "A-started")):
        with open("ckpt.tmp.A", "w") as f:  # each attempt its own temporary name
            f.write("A")
        helper = os.fork()
        if helper == 0:
            go = os.path.join(state.ctl, "go")
            while not os.path.exists(go):
                time.sleep(0.02)
            os.rename("ckpt.tmp.A", "ckpt")  # relative: lands in this attempt's own directory
            _mark(state, "A-renamed")
            os._exit(0)
        _mark(state, "A-started", f"{os.getpid()} {helper}")
        time.sleep(60)
        return
    with open("ckpt.tmp.B", "w") as f:
        f.write("B")
    os.rename("ckpt.tmp.B", "ckpt")
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


def model_in_place(state, channel):
    """`torch.save(obj, "model.pt")`'s way: open the existing name with O_TRUNC and rewrite
    it. The first attempt saves once, then a forked helper of it (no threads) rewrites
    model.pt in place once ctl/go exists: a checkpoint in flight while the attempt is
    stopped. Later attempts rewrite model.pt in place at once."""
    if not os.path.exists(os.path.join(state.ctl, "A-started")):
        with open("model.pt", "wb") as f:
            f.write(b"A")
        helper = os.fork()
        if helper == 0:
            go = os.path.join(state.ctl, "go")
            while not os.path.exists(go):
                time.sleep(0.02)
            with open("model.pt", "wb") as f:  # in place, in this attempt's own directory
                f.write(b"A-late")
            _mark(state, "A-rewrote")
            os._exit(0)
        _mark(state, "A-started", f"{os.getpid()} {helper}")
        time.sleep(60)
        return
    with open("model.pt", "wb") as f:
        f.write(b"B")
    state.result = "B"


def daemon_once(state, channel):
    """The first attempt starts a setsid'd daemon appending to daemon.log in its cwd for
    ever, then sleeps (to be killed); later attempts return at once."""
    if not os.path.exists(os.path.join(state.ctl, "daemon.pid")):
        code = "import time\nwhile True:\n    open('daemon.log', 'a').write('x')\n    time.sleep(0.05)\n"
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        _mark(state, "daemon.pid", str(proc.pid))
        time.sleep(60)
        return
    state.result = "ok"


def scratch_save(state, channel):
    """Writes a checkpoint in its cwd (the node-local scratch copy) and saves: the worker
    syncs it back to the shared workdir before it answers."""
    with open("ckpt", "w") as f:
        f.write("saved")
    state.saved = channel.save()
    state.result = "ok"


def scratch_two_files(state, channel):
    """Writes `a` (5 bytes) and `b` (empty) in its cwd (the node-local scratch copy) and
    saves: the worker syncs them back in that order, checking its claim before each."""
    with open("a", "w") as f:
        f.write("aaaaa")
    open("b", "w").close()
    state.saved = channel.save()
    state.result = "ok"


def late_on_go(state, channel):
    """Writes `late` in its cwd and waits for ctl/go; then saves and sleeps (`save`), or
    returns: the test cancels the job in between."""
    with open("late", "w") as f:
        f.write("late")
    _mark(state, "ready", str(os.getpid()))
    while not os.path.exists(os.path.join(state.ctl, "go")):
        time.sleep(0.02)
    if state.get("save"):
        state.saved = channel.save()
        time.sleep(60)
    state.result = "returned"
