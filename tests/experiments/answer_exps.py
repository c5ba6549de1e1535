"""Experiments of tests/test_silent_answers.py (issue 24): each behaves in one documented way."""

import json
import math
import os

from dbdict_fs import COMPLETE, INCOMPLETE


def returns(state, channel):
    """Returns state.value as it is (a JSON value of the config: "done", false, ...)."""
    state.result = 1
    return state.value


def special_values(state, channel):
    """Stores booleans and infinities as results."""
    state.good = True
    state.bad = False
    state.top = math.inf
    state.bottom = -math.inf
    state["acc/class 3"] = 0.95  # a result key that is no identifier
    return COMPLETE


def counts_in_workdir(state, channel):
    """Counts its runs in ./runs (a file in the workdir) and stores the count: a run that
    starts in an empty workdir stores 1."""
    runs = int(open("runs").read()) + 1 if os.path.exists("runs") else 1
    with open("runs.tmp", "w") as f:
        f.write(str(runs))
    os.replace("runs.tmp", "runs")
    state.runs_seen = runs
    state.cwd_files = sorted(os.listdir("."))
    return COMPLETE


def many_keys(state, channel):
    """Writes state.n_keys results named m_<offset + i>."""
    for i in range(state.n_keys):
        state[f"m_{state.offset + i}"] = i
    return COMPLETE


def waits_for_stop(state, channel):
    """Writes ./started, then checkpoints every 0.05 s until channel() says stop."""
    import time

    with open("started.tmp", "w") as f:
        f.write(json.dumps(os.getpid()))
    os.replace("started.tmp", "started")
    while True:
        time.sleep(0.05)
        if channel() in ("stop", "finish-up"):
            state.stopped = True
            return INCOMPLETE
