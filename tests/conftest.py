"""Shared fixtures: real trees in awkward paths, and the commands run as real processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

# A suite started in the background by a shell without job control (`make test &`, a batch
# job) inherits SIGINT ignored, and so would every command the tests start: a Ctrl-C test
# would see nothing happen. A handled signal is reset to the default at exec, so the
# commands get the disposition a terminal gives them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

HERE = os.path.dirname(os.path.abspath(__file__))
EXPERIMENTS = os.path.join(HERE, "experiments")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run the long stress tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow stress run: use --run-slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tree(tmp_path):
    """A tree path with a space and non-ASCII characters in it (not created yet)."""
    base = tmp_path / "sweep dir é"
    base.mkdir()
    return base / "tree"


@pytest.fixture
def procs_to_end():
    """Processes a test started (append them): each is resumed if stopped, then killed."""
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            p.kill()
            p.wait()


def experiment(name):
    """Spec of one of the test experiments in tests/experiments/exps.py."""
    return f"{os.path.join(EXPERIMENTS, 'exps.py')}:{name}"


def run_cli(*args, cwd=None, env=None, timeout=120, prog="dbdict", input=None):
    """Run a command of ours as a real process; returns CompletedProcess (text)."""
    module = {"dbdict": "main", "dbdict-run-job": "main_run_job", "dbdict-query": "main_query"}[prog]
    code = f"import sys; from dbdict_fs.cli import {module}; sys.exit({module}())"
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)


def wait_for(condition, timeout=30, interval=0.05, what="condition", detail=None):
    """The suite's one wait: poll `condition()` until it returns a true value, and return
    that value; after `timeout` s fail with an AssertionError naming `what` (plus
    `detail()`, e.g. the workers' output, and the last error). A read that fails while a
    file is being replaced (any exception but an AssertionError) just counts as not yet."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = condition()
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            error = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{error}{extra}")
        time.sleep(interval)


def pid_gone(pid):
    """True when the process no longer runs (no such pid, or a zombie nobody reaped yet)."""
    from dbdict_fs.procs import stat_fields

    fields = stat_fields(pid)
    return not fields or fields[0] in (b"Z", b"X")


def read_state(jobdir):
    """The latest state of a job, as the protocol defines it (highest state.<E>.yaml)."""
    from dbdict_fs import jobdir as jd

    return jd.read_latest_state(str(jobdir))[1]


def jobdirs(tree):
    from dbdict_fs import jobdir as jd

    return sorted(jd.iter_jobdirs(str(tree)))


def load_json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]
