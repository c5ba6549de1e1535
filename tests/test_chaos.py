"""Chaos: workers killed with kill -9 and paused with SIGSTOP at random while they book and run.

Whatever happens to the workers, the protocol promises (DESIGN.md 3, 4): every job ends
`done`; no state file is torn; each job's state was written under its top claim; the
committed result is that job's own. A job whose worker was paused or killed mid-run may run
twice (the log shows it) — what must hold is that exactly one attempt's result is committed.
The counts (kills, pauses, steals, double executions) are printed for the report: run with
`-s` to see them.
"""

import json
import os
import random
import signal
import time

import pytest

from dbdict_fs import jobdir as jd
from dbdict_fs.create import create_jobs

import procs
from conftest import experiment
from procs import check_job_files, read_log, wait_for

LEASE, HEARTBEAT = 3.0, 0.5


@pytest.fixture
def hosts(tmp_path):
    with procs.Hosts(tmp_path / "procs") as h:
        yield h


def all_done(paths):
    for path in paths:
        try:
            _, state = jd.read_latest_state(path)
        except Exception:  # noqa: BLE001 - a listing racing a write: look again later
            return False
        if state["dbdict"]["status"] != "done":
            return False
    return True


def run_chaos(tree, hosts, tmp_path, *, n_workers, n_jobs, duration, seed, finish_timeout):
    rng = random.Random(seed)
    log = str(tmp_path / "runs.log")
    configs = [{"i": i, "log": log, "sleep": round(rng.uniform(0.2, 0.5), 2)} for i in range(n_jobs)]
    paths = create_jobs(tree, configs, experiment("append_log")).created
    assert len(paths) == n_jobs
    argv = ["work", tree, "--wait", "--lease", LEASE, "--heartbeat", HEARTBEAT, "--max-attempts", 20, "-q"]
    workers = [hosts.add(argv) for _ in range(n_workers)]
    counts = dict(kills=0, pauses=0, long_pauses=0, restarts=0)
    resume_at = {}  # worker -> boottime at which it gets SIGCONT

    def resume_due(now, everyone=False):
        for w, at in list(resume_at.items()):
            if everyone or now >= at:
                w.signal(signal.SIGCONT)
                del resume_at[w]

    start = time.monotonic()
    next_action = start + rng.uniform(0.3, 1.0)
    while time.monotonic() - start < duration:
        now = time.monotonic()
        resume_due(now)
        if all_done(paths):
            break
        if now >= next_action:
            next_action = now + rng.uniform(0.2, 0.8)
            candidates = [w for w in workers if w.running() and w not in resume_at]
            if candidates:
                w = rng.choice(candidates)
                if rng.random() < 0.45:
                    w.kill9()
                    counts["kills"] += 1
                    workers.remove(w)
                    workers.append(hosts.add(argv))  # a fresh worker takes the dead one's place
                    counts["restarts"] += 1
                else:
                    # half the pauses outlast the lease: the job is stolen and the worker, when
                    # it resumes, must find itself fenced
                    pause = rng.uniform(0.1, 1.2) if rng.random() < 0.5 else rng.uniform(LEASE + 0.5, 2 * LEASE)
                    counts["pauses"] += 1
                    counts["long_pauses"] += pause > LEASE
                    w.signal(signal.SIGSTOP)
                    resume_at[w] = now + pause
        time.sleep(0.02)
    counts["chaos_seconds"] = round(time.monotonic() - start, 1)
    resume_due(0, everyone=True)
    if not any(w.running() for w in workers):
        workers.append(hosts.add(argv))  # someone must finish what is left

    wait_for(lambda: all_done(paths), finish_timeout, interval=0.2,
             what="every job to be done after the chaos")
    for w in workers:  # --wait workers leave once nothing is ready or running
        w.wait(LEASE * 4 + 30)

    runs = read_log(log)
    steals = twice = late_states = give_backs = 0
    for i, path in enumerate(paths):
        states = check_job_files(path)  # every state file parses, and says its own epoch
        listing, state = jd.read_latest_state(path)
        book = state["dbdict"]
        top = listing.claim_epoch
        assert book["status"] == "done", (path, book)
        assert book["epoch"] == top, f"{path}: state of epoch {book['epoch']} under claim.{top}"
        assert state["result"] == i and state["i"] == i, (path, state.get("result"))
        assert i in runs, f"job {i} is done but never ran"
        token = jd.read_claim(path, top)
        if book["pid"] != token["pid"]:
            # a give-back: the winner of `top` found the job already done and re-committed
            # that state unchanged; it must then be the state of an earlier holder
            holders = {jd.read_claim(path, e).get("pid") for e in range(1, top)}
            assert book["pid"] in holders, (path, book, token)
            give_backs += 1
        late_states += sum(1 for e in states if e < top)  # a late write hidden by a newer state
        steals += len(listing.claim_epochs) > 1
        twice += len(runs[i]) > 1
        for name in os.listdir(path):
            assert not name.startswith("claim.") or name[6:].isdigit(), name
    assert sorted(runs) == list(range(n_jobs))
    assert not procs.experiment_processes(tree), "an experiment outlived its worker"
    counts.update(jobs=n_jobs, workers=n_workers, steals=steals, ran_twice=twice,
                  executions=sum(len(p) for p in runs.values()), hidden_late_states=late_states,
                  give_backs=give_backs,
                  leftover_tmp=sum(1 for p in paths for n in os.listdir(p) if n.startswith((".tmp.", ".tok."))))
    print("\nchaos:", json.dumps(counts, sort_keys=True))
    return counts


def test_chaos_kill9_and_sigstop(tree, hosts, tmp_path):
    counts = run_chaos(tree, hosts, tmp_path, n_workers=4, n_jobs=70, duration=25, seed=20261125,
                       finish_timeout=90)
    assert counts["kills"] >= 3 and counts["pauses"] >= 3, counts  # the chaos really happened


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_chaos_long(tree, hosts, tmp_path, seed):
    counts = run_chaos(tree, hosts, tmp_path, n_workers=8, n_jobs=300, duration=120, seed=seed,
                       finish_timeout=300)
    assert counts["kills"] >= 20 and counts["long_pauses"] >= 5, counts
