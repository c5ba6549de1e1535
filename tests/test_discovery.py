"""Discovery without a per-booking scan (DESIGN.md 4.1, dbdict_fs/discovery.py): final marks
are hints that never hide a runnable job, with real worker processes and real files."""

import json
import os

from dbdict_fs import booking
from dbdict_fs import jobdir as jd
from dbdict_fs.create import create_jobs
from dbdict_fs.discovery import Discovery, mark_final, mark_live, mark_path

from conftest import experiment, run_cli


def make(tree, n, name="double", **extra):
    return create_jobs(str(tree), [dict(x=i, **extra) for i in range(n)], experiment(name)).created


def status(job):
    return jd.read_latest_state(job)[1]["dbdict"]["status"]


def test_finished_jobs_are_marked_and_a_later_walk_reads_none_of_them(tree):
    jobs = make(tree, 6)
    assert run_cli("work", tree).returncode == 0
    assert all(status(j) == "done" for j in jobs)
    assert all(os.path.exists(mark_path(j)) for j in jobs)  # marked by the worker that committed
    # A walk of the finished tree yields nothing and reads no state: every job is skipped
    # from its parent's listing.
    walk = Discovery(str(tree))
    assert list(walk.walk()) == [] and walk.marked == 0
    # Marks are dot files: never jobs, never in the index.
    out = run_cli("query", tree, "--format", "json", prog="dbdict")
    rows = json.loads(out.stdout)
    assert out.returncode == 0 and sorted(r["dbdict.path"] for r in rows) == sorted(jobs)


def test_an_unmarked_final_job_is_marked_by_the_next_walk(tree):
    [job] = make(tree, 1)
    assert run_cli("work", tree).returncode == 0
    for top, _, files in os.walk(tree):  # as if its worker died between the commit and the mark
        for name in files:
            if name.startswith(".final."):
                os.unlink(os.path.join(top, name))
    walk = Discovery(str(tree))
    assert list(walk.walk()) == [] and walk.marked == 1 and os.path.exists(mark_path(job))
    # ... and its fan-out directory, now all final, is marked in the tree's listing
    assert os.path.exists(mark_path(os.path.dirname(job)))


def lives(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith(".live."))


def test_a_directory_of_finished_jobs_is_marked_and_looked_at_again_after_requeue_and_create(tree):
    jobs = make(tree, 3)
    assert run_cli("work", tree).returncode == 0
    fanout = {os.path.dirname(j) for j in jobs}
    assert all(os.path.exists(mark_path(d)) for d in fanout)
    assert sorted(n for n in os.listdir(tree) if n.startswith(".final.")) == \
        sorted(".final." + os.path.basename(d) for d in fanout)
    assert lives(tree) == []  # the walk that marked the directories removed create's markers
    # requeue one job: live markers for it and its directory, made before its claim
    assert run_cli("requeue", jobs[0], "--status", "done", "--force").returncode == 0
    parent = os.path.dirname(jobs[0])
    epoch = jd.read_latest_state(jobs[0])[1]["dbdict"]["epoch"]
    assert lives(parent) == [f".live.{os.path.basename(jobs[0])}.{epoch}"]
    assert len([n for n in lives(tree) if n.startswith(f".live.{os.path.basename(parent)}.")]) == 1
    assert run_cli("work", tree).returncode == 0 and status(jobs[0]) == "done"
    assert jd.read_latest_state(jobs[0])[1]["dbdict"]["runs"] == 2
    assert lives(parent) == []  # its final commit removed the requeue's marker
    # a new job created in a marked directory is found (its directory is marked live)
    assert run_cli("work", tree).returncode == 0  # the walk marks the directories again
    assert all(os.path.exists(mark_path(d)) for d in fanout) and lives(tree) == []
    [new] = create_jobs(str(tree), [{"x": 100}], experiment("double"), name=os.path.relpath(jobs[1], tree) + "-b").created
    assert os.path.dirname(new) == os.path.dirname(jobs[1])
    assert lives(tree)
    assert run_cli("work", tree).returncode == 0 and status(new) == "done"


def test_requeue_of_a_done_job_makes_it_live_and_a_worker_runs_it_again(tree):
    [job] = make(tree, 1)
    assert run_cli("work", tree).returncode == 0
    assert os.path.exists(mark_path(job))
    assert run_cli("requeue", tree, "--status", "done", "--force").returncode == 0
    assert status(job) == "ready" and lives(os.path.dirname(job))
    proc = run_cli("work", tree)
    assert proc.returncode == 0 and "done" in proc.stderr
    book = jd.read_latest_state(job)[1]["dbdict"]
    assert book["status"] == "done" and book["runs"] == 2


def test_a_mark_made_after_a_requeue_does_not_hide_the_job(tree):
    """A marker that read `done` at epoch E creates its mark after a requeue linked E+1
    (and the marker may die right after: it never has to undo anything): the requeue's
    live marker, made before its link, is newer than E, so the job is still walked."""
    [job] = make(tree, 1)
    assert run_cli("work", tree).returncode == 0
    epoch = jd.read_latest_state(job)[1]["dbdict"]["epoch"]
    held = booking.claim(job, force=True, purpose="requeue", wait=False, lease=30, heartbeat=2,
                         before_link=lambda e: mark_live(job, e))
    state = held.state
    state["dbdict"].update(status="ready")
    held.write_state(state)
    mark_final(job, epoch, None)  # the late marker
    assert os.path.exists(mark_path(job))
    assert [p for p, _, _ in Discovery(str(tree)).walk()] == [job]
    # and the mark removes only markers not newer than its epoch
    mark_final(job, epoch, epoch + 1)
    assert lives(os.path.dirname(job)) == [f".live.{os.path.basename(job)}.{epoch + 1}"]


def test_a_job_deleted_and_created_again_is_not_hidden_by_the_old_mark(tree):
    import shutil

    [job] = make(tree, 1)
    assert run_cli("work", tree).returncode == 0
    shutil.rmtree(job)
    assert os.path.exists(mark_path(job))  # the old mark outlives the job
    [again] = make(tree, 1)
    assert again == job and not os.path.exists(mark_path(job))
    assert run_cli("work", tree).returncode == 0 and status(job) == "done"


def test_jobs_at_any_depth_and_a_stray_file_are_walked(tree):
    jobs = create_jobs(str(tree), [dict(x=i) for i in range(4)], experiment("double"),
                       name="deep/{x}/run").created
    with open(os.path.join(tree, "deep", "notes.txt"), "w") as f:
        f.write("a person's file")
    os.symlink("/", os.path.join(tree, "deep", "escape"))  # never followed
    proc = run_cli("work", tree)
    assert proc.returncode == 0, proc.stderr
    assert all(status(j) == "done" for j in jobs)
    assert sorted(os.path.basename(os.path.dirname(j)) for j in jobs) == ["0", "1", "2", "3"]


def test_a_wait_worker_exits_when_the_last_job_it_watched_ends(tree):
    """--wait polls only the jobs it saw held, and exits once they have ended and one more
    walk finds nothing ready or running."""
    import subprocess
    import sys
    import time

    [job] = make(tree, 1, name="sleeper", sleep=3)
    first = subprocess.Popen([sys.executable, "-c", f"from dbdict_fs.cli import main; import sys; "
                              f"sys.exit(main(['run', {job!r}]))"])
    deadline = time.monotonic() + 60
    while status(job) != "running":
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    proc = run_cli("work", tree, "--wait", "--heartbeat", "0.5", "--lease", "5", timeout=120)
    assert first.wait(timeout=60) == 0
    assert proc.returncode == 0, proc.stderr
    assert "no runnable job" in proc.stderr and status(job) == "done"
    assert json.loads(open(jd.JobPaths(job).claim(1)).read())["purpose"] == "run"


def test_a_steal_reads_the_state_again_after_its_link(tree):
    """Booking skips the read after the link only for a plain `ready` state (its writer's
    last act). A steal must read again: here the stale holder's late commit of `done` lands
    between the stealer's judgment and its link, and the stealer must see `done` (and give
    the job back), never start from the `running` state it judged on."""
    from procs import token_dead_here

    [job] = make(tree, 1)
    with open(os.path.join(job, "claim.1"), "w") as f:
        json.dump(token_dead_here(), f)  # a holder of this host whose process is gone: stale at once
    running = jd.read_latest_state(job)[1]
    running["dbdict"].update(status="running", epoch=1, attempts=1, runs=1)
    jd.write_state_file(job, 1, running)

    class LateCommit(booking.Observer):
        """Judges the holder gone, and then the holder's late commit lands."""

        def is_stale(self, jobdir, epoch, token=None, state=None, wait=True):
            stale = super().is_stale(jobdir, epoch, token, state, wait)
            if stale:
                done = jd.read_latest_state(jobdir)[1]
                done["dbdict"]["status"] = "done"
                done["result"] = 2
                jd.write_state_file(jobdir, 1, done)
            return stale

    held = booking.claim(job, observer=LateCommit(), lease=30, heartbeat=2)
    assert held.epoch == 2 and held.state["dbdict"]["status"] == "done" and held.state["result"] == 2
    assert not booking.runnable_after_claim(held)
    booking.give_back(held)
    assert status(job) == "done" and jd.read_latest_state(job)[1]["dbdict"]["epoch"] == 2


def test_hinted_jobs_run_first_highest_priority_first(tree):
    """A walk is in random order, but jobs made ready above the default priority leave a
    hint (TREE/.dbdict/hints) and run first: a preempted job resumes at restart priority
    before fresh ones, and a job created at priority 3 before both."""
    from dbdict_fs.discovery import HINTS

    fresh = make(tree, 8)
    [preempted] = create_jobs(str(tree), [{"x": 100}], experiment("once_incomplete")).created
    proc = run_cli("run", preempted)
    assert proc.returncode == 3, proc.stderr  # INCOMPLETE: ready again at restart priority 2.0
    assert jd.read_latest_state(preempted)[1]["dbdict"]["priority"] == 2.0
    [urgent] = create_jobs(str(tree), [{"x": 200}], experiment("double"), priority=3.0).created
    assert len(os.listdir(os.path.join(tree, HINTS))) == 2
    order = []
    for _ in range(3):
        proc = run_cli("work", tree, "--max-jobs", "1")
        assert proc.returncode == 0, proc.stderr
        order += [line.split(None, 1)[1] for line in proc.stderr.splitlines() if line.startswith("done ")]
    assert order[:2] == [urgent, preempted] and order[2] in fresh, order
    assert os.listdir(os.path.join(tree, HINTS)) == []  # each booker dropped its hint


def test_a_stale_hint_is_dropped_and_costs_nothing_more(tree):
    from dbdict_fs.discovery import HINTS, hint

    [job] = make(tree, 1)
    assert run_cli("work", tree).returncode == 0
    hint(job, 9.0, 0)  # a hint left over (its state, epoch 0, is over: the job has run since)
    with open(os.path.join(tree, HINTS, "garbage~..%2Fetc~0"), "w"):
        pass  # names outside the tree are never followed
    walk = Discovery(str(tree))
    assert list(walk.walk()) == []
    assert os.listdir(os.path.join(tree, HINTS)) == ["garbage~..%2Fetc~0"]
