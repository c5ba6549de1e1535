"""Experiments of the history tests: they log learning curves with channel.log."""

import os
import time

from dbdict_fs import COMPLETE, INCOMPLETE, Experiment


def curve(state, channel):
    """Logs loss = 1/step and valid_err = 1/(step+1) for steps 1..state.steps, checkpointing
    only every `ckpt_every` steps, so a resume re-logs the steps after its checkpoint."""
    step = int(open("ckpt").read()) if os.path.exists("ckpt") else 0
    every = int(state.get("ckpt_every", 5))
    while step < state.steps:
        time.sleep(state.get("step_time", 0.02))
        step += 1
        channel.log(step, loss=1.0 / step, valid_err=1.0 / (step + 1), run=state.dbdict.runs)
        if state.get("flush"):
            channel.flush()  # each point to the worker before its checkpoint
        with open("logged.tmp", "w") as f:
            f.write(str(step))
        os.replace("logged.tmp", "logged")
        if step % every == 0:
            with open("ckpt.tmp", "w") as f:
                f.write(str(step))
            os.replace("ckpt.tmp", "ckpt")
        if channel() in ("stop", "finish-up"):
            return INCOMPLETE
    return COMPLETE


def saves_then_logs(state, channel):
    """First run: logs steps 1..3, saves (committed), then keeps logging until killed.
    A later run (the marker exists) logs step 100 if `relog`, and completes."""
    if os.path.exists("committed"):
        if state.get("relog"):
            channel.log(100, valid_err=0.5)
        return COMPLETE
    for step in (1, 2, 3):
        channel.log(step, valid_err=1.0 / step)
    channel.save()
    open("committed", "w").close()
    step = 3
    while True:
        step += 1
        channel.log(step, valid_err=-1.0)  # never in a committed history
        time.sleep(0.02)


class CurveClass(Experiment):
    """The class form: logs through self.log and the channel."""

    def run(self, channel):
        for step in range(1, int(self.state.get("steps", 3)) + 1):
            self.log(step, acc=step / 10)
        channel.log(0, acc=0.0)
        return COMPLETE


def quick(state, channel):
    """A tiny training run: valid_err falls with the steps, depends on lr, arch and seed."""
    base = {"a": 0.2, "b": 0.4, "resnet": 0.2, "vgg": 0.4}.get(state.get("arch"), 0.3) + 0.01 * state.get("seed", 0)
    for step in range(1, int(state.get("steps", 5)) + 1):
        channel.log(step, valid_err=base + state.lr / step, loss=1.0 / step)
    # nan_when / fail_when: {key: value, ...} (the same in every job) picks the jobs that diverge / fail
    picked = lambda name: bool(state.get(name)) and all(state.get(k) == v for k, v in state[name].items())  # noqa: E731
    state.valid_err = float("nan") if picked("nan_when") else base + state.lr / state.get("steps", 5)
    if state.get("fail") or picked("fail_when"):
        raise RuntimeError("diverged: loss is nan")
    return COMPLETE
