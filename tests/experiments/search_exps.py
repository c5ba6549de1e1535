"""Experiments the search tests run."""

import math
import time

from dbdict_fs import COMPLETE


def quadratic(state, channel):
    """loss = (x - 0.3)^2 + (y - 2)^2 (+ 0.1 when kind == 'b'); sleeps `sleep` s first."""
    time.sleep(state.get("sleep", 0))
    loss = (state.x - 0.3) ** 2 + (state.get("y", 2) - 2) ** 2 + (0.1 if state.get("kind") == "b" else 0.0)
    state.loss = loss
    return COMPLETE


def curve(state, channel):
    """A learning curve: loss(step) = q + 1 / (step + 1), q the quadratic above; logs each
    step and returns when channel() says anything other than None or 'save'."""
    q = (state.x - 0.3) ** 2
    for step in range(int(state.get("steps", 20))):
        time.sleep(state.get("step_time", 0.0))
        loss = q + 1.0 / (step + 1)
        channel.log(step, loss=loss)
        answer = channel()
        if answer in ("prune", "stop", "finish-up"):
            state.stopped = answer
            return COMPLETE
    state.final_loss = q + 1.0 / int(state.get("steps", 20))
    return COMPLETE


def branin(state, channel):
    x1, x2 = state.x1, state.x2
    a, b, c, r, s, t = 1, 5.1 / (4 * math.pi ** 2), 5 / math.pi, 6, 10, 1 / (8 * math.pi)
    state.value = a * (x2 - b * x1 ** 2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s
    return COMPLETE


def logged(state, channel):
    """The quadratic, after appending "<trial> <pid>" to the file `log` (O_APPEND: one line
    per execution) and sleeping `sleep` s: the chaos test counts executions per trial."""
    import os

    with open(state.log, "a") as f:
        f.write(f"{state.dbdict['trial']} {os.getpid()}\n")
    time.sleep(state.get("sleep", 0))
    state.loss = (state.x - 0.3) ** 2 + (state.get("y", 2) - 2) ** 2
    return COMPLETE


def curve_ignoring_prune(state, channel):
    """Logs a bad loss at every step and never looks at the channel (sleeps `sleep` s)."""
    for step in range(3):
        channel.log(step, loss=100.0 + step)
    channel.flush()
    time.sleep(state.get("sleep", 60))
    return COMPLETE


def crossing(state, channel):
    """A curve that starts worse and ends better when x == 1: loss = (1 + x) / (step + 1) +
    0.5 - 0.4 x. Logs each step; returns on 'prune'; writes the last loss."""
    x = state.x
    for step in range(int(state.get("steps", 27))):
        loss = (1 + x) / (step + 1) + 0.5 - 0.4 * x
        channel.log(step, loss=loss)
        if channel() == "prune":
            state.stopped = "prune"
            return COMPLETE
    state.loss = loss
    return COMPLETE
