"""Experiments for tests/test_fence_gaps.py and tests/test_chaos.py."""

import os
import time


def quick(state, channel):
    """Returns at once (after `sleep` seconds, if given), naming the epoch that ran it."""
    if state.get("sleep"):
        time.sleep(state.sleep)
    state.result = state["dbdict"]["epoch"]


def _put(name, text):
    """tmp + rename in the cwd, as DESIGN.md 5 asks experiments to write checkpoints."""
    tmp = f".{name}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, name)


def tagged(state, channel):
    """The chaos experiment: appends `i pid` to the shared log (the count of executions),
    records every tagged file its workdir held when it started (`found`: what this attempt
    started from), then a forked helper (no threads, so no watchdog of its own, like a data
    loader or a C extension's worker) writes, in 8 steps over `sleep` seconds and each by
    tmp + rename, `tag.<epoch>.<k>` (a file of its own) and `ckpt` (one name every attempt
    replaces), each holding `<epoch> <k> <pid>`. `ran_epoch` names the attempt."""
    fd = os.open(state.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{state.i} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    epoch = state["dbdict"]["epoch"]
    found = {}
    for name in sorted(os.listdir(".")):
        if name.startswith("tag.") or name == "ckpt":
            with open(name) as f:
                found[name] = f.read()
    steps = 8
    pause = state.get("sleep", 0.2) / steps
    helper = os.fork()
    if helper == 0:
        try:
            for k in range(steps):
                _put(f"tag.{epoch}.{k}", f"{epoch} {k} {os.getpid()}")
                _put("ckpt", f"{epoch} {k} {os.getpid()}")
                time.sleep(pause)
        finally:
            os._exit(0)
    os.waitpid(helper, 0)
    state.found = sorted([name, text] for name, text in found.items())  # keys stay identifiers
    state.ran_epoch = epoch
    state.result = state.i
