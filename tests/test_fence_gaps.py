"""The last gaps of issue 12, each with real processes paused or killed at the exact step
(the seam DBDICT_TEST_STOP_BEFORE_RENAME, jobdir._test_stop):

1. a holder whose commit a newer claim hid reports the job lost (exit 4), never `done`;
2. `state.yaml` names the newest, existing state once writers settle;
3. `.tmp.state.*` files of writers killed between their write and their rename are swept:
   by the next holder's commit, and on a final job by the next tool that reads its state.
"""

import os
import signal
import subprocess
import sys

import pytest

from dbdict_fs import create_jobs
from dbdict_fs import jobdir as jd

from conftest import read_state, wait_for
from procs import proc_state
from test_slurm import slurm_cluster  # noqa: F401 - the session fixture (starts the local cluster)

HERE = os.path.dirname(os.path.abspath(__file__))
EXPS = os.path.join(HERE, "experiments", "gap_exps.py")
CLI = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]
SHORT = ["--lease", "3", "--heartbeat", "0.5"]
SEAM = "DBDICT_TEST_STOP_BEFORE_RENAME"


def one_job(tree, **config):
    return create_jobs(tree, [dict(config, x=1)], f"{EXPS}:quick").created[0]


def env_for(host, seam=None):
    env = dict(os.environ, DBDICT_HOST=host) if host else dict(os.environ)
    env.pop(SEAM, None)
    if seam:
        env[SEAM] = seam
    return env


def stopped_at(marker, proc):
    """Wait until `proc` wrote `marker` and stopped itself there; its pid."""
    pid = int(wait_for(lambda: os.path.exists(marker) and open(marker).read(), timeout=60,
                       what=f"the seam {os.path.basename(marker)}",
                       detail=lambda: f"exit {proc.poll()}"))
    wait_for(lambda: proc_state(pid) == "T", timeout=10, what="the writer to stop itself")
    return pid


def paused_run(job, seams, procs_to_end):
    """`dbdict run JOB` on host a, stopping itself at the seams (`point:status:marker`,...)."""
    a = subprocess.Popen(CLI + ["run", job, *SHORT], env=env_for("host-a", seams),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs_to_end.append(a)
    return a


def steal_and_finish(tree):
    """Another host's worker: waits out the stopped holder's lease, steals, commits done."""
    b = subprocess.run(CLI + ["work", str(tree), "--wait", *SHORT], env=env_for("host-b"),
                       capture_output=True, text=True, timeout=120)
    assert b.returncode == 0, b.stderr
    return b


def tmp_states(job):
    return sorted(n for n in os.listdir(job) if n.startswith(".tmp.state."))


def link_is_the_newest(job):
    listing = jd.list_job(job)
    target = os.readlink(os.path.join(job, jd.STATE_LINK))
    return target == jd.state_name(listing.state_epoch) and os.path.isfile(os.path.join(job, target))


def cont_and_wait(proc, timeout=60):
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=timeout)
    return err


# ---------------------------------------------------------------- 1. hidden commits

def test_a_commit_hidden_by_a_newer_claim_is_reported_lost_not_done(tree, tmp_path, procs_to_end):
    """A passes its fence check for the final `done` and is paused there; B (another host)
    steals and commits done; A resumes, and its rename lands under a newer claim: A exits
    4 saying it lost the job (never `done`), and removes its hidden state."""
    job = one_job(tree)
    marker = str(tmp_path / "a-checked")
    a = paused_run(job, f"write:done:{marker}", procs_to_end)
    stopped_at(marker, a)
    steal_and_finish(tree)
    state = read_state(job)
    assert state["dbdict"]["status"] == "done" and state["result"] == 2, state
    err = cont_and_wait(a)
    assert a.returncode == 4, err
    assert "lost: state.1.yaml was written, but claim.2 was taken by host-b" in err, err
    assert not any(line.startswith("done") for line in err.splitlines()), err
    assert jd.list_job(job).state_epochs == [2]  # A's hidden state.1 was removed by A
    assert read_state(job)["result"] == 2 and link_is_the_newest(job)


def test_a_rename_whose_temporary_file_a_newer_commit_swept_is_lost_too(tree, tmp_path, procs_to_end):
    """Paused between its temporary file and its rename instead: B's commit removes A's
    temporary file (it could only become a hidden state), so A's rename fails: lost, 4."""
    job = one_job(tree)
    marker = str(tmp_path / "a-before-rename")
    a = paused_run(job, f"state:done:{marker}", procs_to_end)
    stopped_at(marker, a)
    steal_and_finish(tree)
    assert tmp_states(job) == []
    err = cont_and_wait(a)
    assert a.returncode == 4, err
    assert "not written" in err and not any(line.startswith("done") for line in err.splitlines()), err
    assert jd.list_job(job).state_epochs == [2] and read_state(job)["result"] == 2 and link_is_the_newest(job)


def test_a_commit_that_no_newer_claim_hid_is_still_done(tree, tmp_path, procs_to_end):
    """The check after the rename costs no false alarm: paused there with no steal, done."""
    job = one_job(tree)
    marker = str(tmp_path / "a-before-rename")
    a = subprocess.Popen(CLI + ["run", job, *SHORT], env=env_for(None, f"state:done:{marker}"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs_to_end.append(a)
    stopped_at(marker, a)
    err = cont_and_wait(a)
    assert a.returncode == 0, err
    assert read_state(job)["dbdict"]["status"] == "done"


# ---------------------------------------------------------------- 2. state.yaml

def test_state_link_never_names_a_removed_state_once_writers_settle(tree, tmp_path, procs_to_end):
    """A chose `state.1.yaml` as the link's target for its running commit and is paused
    before making the link; B steals, commits (removing state.1) and finishes; A's late link
    lands on the removed file: A sees it and repoints it at the newest state."""
    job = one_job(tree)
    marker = str(tmp_path / "a-before-link")
    a = paused_run(job, f"link:running:{marker}", procs_to_end)
    stopped_at(marker, a)
    assert os.readlink(os.path.join(job, jd.STATE_LINK)) == "state.0.yaml"
    steal_and_finish(tree)
    assert jd.list_job(job).state_epochs == [2] and link_is_the_newest(job)
    err = cont_and_wait(a)
    assert a.returncode == 4, err  # fenced: its running commit was overtaken
    assert link_is_the_newest(job), os.readlink(os.path.join(job, jd.STATE_LINK))
    assert read_state(job)["dbdict"]["status"] == "done"


# ---------------------------------------------------------------- 3. transient files

def test_a_writer_killed_before_its_rename_leaves_nothing_after_the_next_commit(tree, tmp_path, procs_to_end):
    """kill -9 between the temporary file of the final state and its rename: the next
    holder (same host, fast path) runs the job in far less than a lease, and its commit
    removes the leftover, which no heartbeat sweep would (it waits a lease)."""
    job = one_job(tree)
    marker = str(tmp_path / "a-before-rename")
    a = subprocess.Popen(CLI + ["run", job], env=env_for(None, f"state:done:{marker}"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs_to_end.append(a)
    stopped_at(marker, a)
    a.kill()
    a.wait()
    assert tmp_states(job) and tmp_states(job)[0].startswith(".tmp.state.1.yaml."), tmp_states(job)
    b = subprocess.run(CLI + ["run", job], env=env_for(None), capture_output=True, text=True, timeout=120)
    assert b.returncode == 0, b.stderr
    assert read_state(job)["result"] == 2
    assert tmp_states(job) == []
    assert link_is_the_newest(job)


def test_a_late_writer_killed_after_the_final_commit_is_swept_by_the_next_read(tree, tmp_path, procs_to_end):
    """A passes its fence check and is paused before its temporary file; B steals and
    commits done (nothing to sweep yet); A writes its temporary file and is killed -9
    before the rename: a done job that no holder will ever visit again holds a leftover.
    The next tool that reads the job's state removes it (here `dbdict show`, and the SLURM
    script's `ready` check)."""
    job = one_job(tree)
    m1, m2 = str(tmp_path / "a-before-write"), str(tmp_path / "a-before-rename")
    a = paused_run(job, f"write:done:{m1},state:done:{m2}", procs_to_end)
    stopped_at(m1, a)
    steal_and_finish(tree)
    assert tmp_states(job) == []
    os.kill(a.pid, signal.SIGCONT)
    stopped_at(m2, a)
    a.kill()
    a.wait()
    assert [n.split(".yaml.")[0] for n in tmp_states(job)] == [".tmp.state.1"]
    show = subprocess.run(CLI + ["show", job], capture_output=True, text=True, timeout=60)
    assert show.returncode == 0, show.stderr
    assert tmp_states(job) == []
    assert read_state(job)["result"] == 2 and link_is_the_newest(job)


# ---------------------------------------------------------------- 6. SLURM submissions that lost workers

def test_status_says_when_a_slurm_submission_lost_workers(tree, tmp_path):
    """The sbatch script appends a line per abnormal worker death to `<script>.events`;
    status reads it for every recorded submission, with one squeue call (here a stand-in
    squeue on PATH that lists two running tasks of the job)."""
    one_job(tree)
    slurm_dir = os.path.join(str(tree), ".dbdict", "slurm")
    os.makedirs(slurm_dir, exist_ok=True)
    base = os.path.join(slurm_dir, "work-20261203T000000Z-abcd")
    open(base + ".sh", "w").close()
    with open(base + ".jobid", "w") as f:
        f.write("4242\n")
    with open(base + ".events", "w") as f:  # what the script writes (see slurm._SCRIPT)
        f.write("2026-12-03T00:00:01Z 4242_0 died signal 9 restarted 1\n"
                "2026-12-03T00:00:09Z 4242_1 died signal 9 restarted 1\n"
                "2026-12-03T00:00:20Z 4242_1 died signal 9 not-restarted 3\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "squeue-calls"
    (bindir / "squeue").write_text(f"#!/bin/sh\necho \"$@\" >> '{calls}'\n"
                                   "printf '4242_0 RUNNING\\n4242_2 RUNNING\\n4242_1 COMPLETED\\n'\n")
    (bindir / "squeue").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    out = subprocess.run(CLI + ["status", str(tree)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "job 4242: 2 tasks running; 3 workers died abnormally, 2 replaced, 1 NOT replaced" in out.stdout, out.stdout
    assert "lost workers" in out.stdout
    assert calls.read_text().count("\n") == 1  # one squeue call for every submission
    js = subprocess.run(CLI + ["status", str(tree), "--format", "json"], capture_output=True, text=True,
                        timeout=60, env=env)
    import json
    [sub] = json.loads(js.stdout)["slurm"]
    assert (sub["job"], sub["died"], sub["restarted"], sub["not_restarted"], sub["running"]) == ("4242", 3, 2, 1, 2)


def test_status_of_a_tree_without_submissions_asks_no_scheduler(tree, tmp_path):
    one_job(tree)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "squeue-calls"
    (bindir / "squeue").write_text(f"#!/bin/sh\necho \"$@\" >> '{calls}'\n")
    (bindir / "squeue").chmod(0o755)
    out = subprocess.run(CLI + ["status", str(tree)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"))
    assert out.returncode == 0 and "slurm" not in out.stdout, out.stdout
    assert not calls.exists()


@pytest.mark.slurm
def test_status_counts_a_kill_9ed_slurm_worker_that_was_replaced(slurm_cluster, tree):
    """On the local cluster: kill -9 of a task's worker; the script replaces it and logs the
    death; `dbdict status` says one worker died abnormally and was replaced, one task runs."""
    from test_slurm import do_submit, job_status, make_jobs, squeue_states
    [job] = make_jobs(tree, "sleeper", [{"sleep": 20}])
    job_id, _ = do_submit(tree, "--workers", "1", "--time", "10")
    try:
        wait_for(lambda: squeue_states(job_id).get(f"{job_id}_0") == "RUNNING" and job_status(job) == "running",
                 timeout=60, what="the experiment to start")
        first = read_state(job)["dbdict"]["pid"]
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: read_state(job)["dbdict"]["pid"] != first and job_status(job) == "running",
                 timeout=60, what="the replaced worker to run the job again")
        out = subprocess.run(CLI + ["status", str(tree)], capture_output=True, text=True, timeout=60)
        assert f"job {job_id}: 1 task running; 1 worker died abnormally, 1 replaced" in out.stdout, out.stdout
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60)
