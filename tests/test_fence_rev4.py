"""DESIGN revision 4, 5.1 and 5.2 (issue 23, items 5-7): with real processes, no write of an
earlier attempt reaches the committed workdir, whoever fenced it and however it was left.

5. a requeue or cancel from another host between a stopped holder and the next run: the
   next attempt does not reuse the stopped holder's directory (the command's own exited
   process proves nothing about the holder);
6. the shepherd killed -9 (the OOM killer): its attempt's setsid daemon does not write into
   the next attempt's directory;
7. a steal from a stopped holder shares no inode with it: a late in-place rewrite
   (`torch.save`'s O_TRUNC) of the old attempt never changes the committed checkpoint.
"""

import os
import signal
import subprocess

import pytest

from conftest import read_state, wait_for
from procs import pid_gone
from test_fence import CLI, SHORT, ctl_file, job_with


def stop_attempt(job, ctl, proc):
    """SIGSTOP worker, shepherd and the experiment's group of a running attempt (a SLURM
    suspend, a hung mount); returns (experiment pid, its helper's pid, shepherd pid)."""
    wait_for(lambda: ctl_file(ctl, "A-started") and read_state(job)["dbdict"]["status"] == "running",
             timeout=60, what="attempt A to start", detail=lambda: f"exit {proc.poll()}")
    exp, helper = map(int, ctl_file(ctl, "A-started").split())
    shepherd = read_state(job)["dbdict"]["shepherd"][0]
    for pid in (proc.pid, shepherd):
        os.kill(pid, signal.SIGSTOP)
    os.killpg(exp, signal.SIGSTOP)
    return exp, helper, shepherd


def resume_late_write(ctl, proc, exp, helper, shepherd, marker):
    """Let the stopped attempt's helper do its late write alone, then resume the rest."""
    open(os.path.join(ctl, "go"), "w").close()
    os.kill(helper, signal.SIGCONT)
    wait_for(lambda: ctl_file(ctl, marker) is not None, timeout=30, what=f"the stale attempt's {marker}")
    os.killpg(exp, signal.SIGCONT)
    for pid in (shepherd, proc.pid):
        os.kill(pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err  # fenced: it never claims success


def host(name):
    return dict(os.environ, DBDICT_HOST=name)


def cli(*args, env=None):
    out = subprocess.run(CLI + list(args), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


@pytest.fixture
def attempt_a():
    started = []

    def start(job):
        a = subprocess.Popen(CLI + ["run", job, *SHORT], env=host("host-a"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        started.append(a)
        return a
    yield start
    for a in started:
        if a.poll() is None:
            try:
                os.kill(a.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            a.kill()
            a.wait()


def committed(job):
    state = read_state(job)
    assert os.path.realpath(os.path.join(job, "workdir")) == os.path.join(os.path.realpath(job),
                                                                          state["dbdict"]["workdir"])
    return state


def test_a_steal_shares_no_inode_with_the_stopped_holder(tree, attempt_a):
    """Item 7: B steals from a stopped A and rewrites model.pt in place, as torch.save does;
    A's helper, resumed late, rewrites its model.pt in place too: B's stays B."""
    job, ctl = job_with(tree, "model_in_place")
    a = attempt_a(job)
    stopped = stop_attempt(job, ctl, a)
    cli("work", str(tree), "--wait", *SHORT, env=host("host-b"))
    model = os.path.join(job, "workdir", "model.pt")
    assert read_state(job)["result"] == "B" and open(model, "rb").read() == b"B"
    resume_late_write(ctl, a, *stopped, "A-rewrote")
    assert open(model, "rb").read() == b"B"
    state = committed(job)
    assert os.stat(model).st_nlink == 1 and state["dbdict"]["status"] == "done"
