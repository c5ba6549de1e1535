"""Experiments the tests run (each behaves in one documented way)."""

import os
import signal
import sys
import time

from dbdict_fs import COMPLETE, INCOMPLETE, Experiment


def double(state, channel):
    """Writes result = 2 * x and prints to stdout and stderr."""
    print(f"x is {state.x}")
    print("to stderr", file=sys.stderr)
    state.result = state.x * 2
    return COMPLETE


def fails(state, channel):
    raise ValueError(f"bad x {state.get('x')}")


def resumable(state, channel):
    """Counts to state.steps, one step per `step_time` s, checkpointing to ./ckpt; stops on channel."""
    step = int(open("ckpt").read()) if os.path.exists("ckpt") else 0
    state.resumed_from = step
    while step < state.steps:
        time.sleep(state.get("step_time", 0.05))
        step += 1
        with open("ckpt.tmp", "w") as f:
            f.write(str(step))
        os.replace("ckpt.tmp", "ckpt")
        answer = channel()
        if answer == "save":
            state.progress = step
            channel.save()
        elif answer in ("stop", "finish-up"):
            state.progress = step
            return INCOMPLETE
    state.result = step
    return COMPLETE


def ignores_stop(state, channel):
    """Never looks at the channel; sleeps `sleep` seconds."""
    time.sleep(state.get("sleep", 60))
    state.result = "finished"


def once_incomplete(state, channel):
    """INCOMPLETE on the first run (leaves a marker in workdir), COMPLETE after."""
    if not os.path.exists("marker"):
        open("marker", "w").close()
        state.first_cwd = os.getcwd()
        return INCOMPLETE
    state.second_cwd = os.getcwd()
    state.result = "resumed"


def crashes(state, channel):
    """Kills its own process (as the OOM killer would)."""
    os.kill(os.getpid(), signal.SIGKILL)


def append_log(state, channel):
    """Appends one line to a shared log (O_APPEND), the test's count of executions."""
    fd = os.open(state.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{state.i} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    if state.get("sleep"):
        time.sleep(state.sleep)
    state.result = state.i


def sleeper(state, channel):
    """Sleeps in short steps, honouring 'stop'; records its pid (for orphan tests)."""
    with open("child.pid", "w") as f:
        f.write(str(os.getpid()))
    end = time.time() + state.get("sleep", 30)
    while time.time() < end:
        if channel() == "stop":
            state.stopped = True
            return INCOMPLETE
        time.sleep(0.05)
    state.result = "slept"


def bad_value(state, channel):
    state.result = object()


class Counter(Experiment):
    """Class form: start() on the first run, resume() after; counts runs in workdir."""

    defaults = {"n": 3, "opt": {"lr": 0.1}}

    def start(self):
        self.state.started = True
        with open("runs", "w") as f:
            f.write("0")

    def resume(self):
        self.state.resumed = True

    def run(self, channel):
        runs = int(open("runs").read()) + 1
        with open("runs", "w") as f:
            f.write(str(runs))
        self.state.runs_seen = runs
        if runs < 2:
            return INCOMPLETE
        self.state.result = self.state.n * 10
        return COMPLETE


def sweep():
    """A generator of configs, as users write them."""
    for x in (1, 2, 3):
        yield {"x": x, "model": {"arch": "mlp", "depth": x}}


def fork_then_die(state, channel):
    """Forks a helper that keeps the result pipe open, then dies without returning."""
    if os.fork() == 0:
        time.sleep(3600)
        os._exit(0)
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGKILL)


def with_helper(state, channel):
    """Starts a helper process (a data loader, a simulator), records its pid, then works."""
    import subprocess

    helper = subprocess.Popen(["sleep", "300"])
    with open("helper.pid", "w") as f:
        f.write(str(helper.pid))
    time.sleep(state.get("sleep", 60))


def big_state(state, channel):
    """Writes more values than a state file may hold."""
    state.curve = list(range(1_100_000))
