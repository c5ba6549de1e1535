"""Experiments of the worker-pool tests (tests/test_pool.py): no GPU, they record what they see."""

import os
import time

from dbdict_fs import COMPLETE, INCOMPLETE


def sees_devices(state, channel):
    """Records CUDA_VISIBLE_DEVICES and its own start and end times. Each job first leaves a
    file in `state.meet` and waits until `state.parties` such files exist (a rendezvous: the
    first `parties` jobs must run at the same time, so that many workers take part)."""
    state.seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    state.t_start = time.time()
    with open(os.path.join(state.meet, f"{os.getpid()}-{state.x}"), "w"):
        pass
    deadline = time.monotonic() + 120
    while len(os.listdir(state.meet)) < state.parties:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(os.listdir(state.meet))} of {state.parties} jobs ran at once")
        time.sleep(0.02)
    time.sleep(state.get("sleep", 0.1))
    state.t_end = time.time()
    return COMPLETE


def until_released(state, channel):
    """Runs until the file `state.release` exists (then COMPLETE) or the channel says stop
    (then INCOMPLETE); counts its runs in workdir/runs."""
    runs = int(open("runs").read()) + 1 if os.path.exists("runs") else 1
    with open("runs.tmp", "w") as f:
        f.write(str(runs))
    os.replace("runs.tmp", "runs")
    state.runs_seen = runs
    while not os.path.exists(state.release):
        if channel() in ("stop", "finish-up"):
            state.stopped = True
            return INCOMPLETE
        time.sleep(0.05)
    state.released = True
    return COMPLETE
