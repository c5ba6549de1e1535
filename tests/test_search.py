"""Searches (DESIGN.md 11): the definition in the tree, trial numbers taken exactly once with
booking's link() claims, workers that ask a search when nothing is runnable, the samplers.

The process tests use real workers on simulated hosts (tests/procs.py); a taker stops itself
at the exact step between winning a trial number and writing its job (the seam
DBDICT_TEST_SEARCH_STOP), so the interleaving is the same on every run.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import procs
from conftest import EXPERIMENTS, read_state, run_cli, wait_for
from dbdict_fs import jobdir as jd
from dbdict_fs import searches
from procs import proc_state, read_log

EXP = f"{os.path.join(EXPERIMENTS, 'search_exps.py')}"
LEASE, HEARTBEAT = 3.0, 0.5
SHORT = ["--lease", str(LEASE), "--heartbeat", str(HEARTBEAT)]
SPACE = ["x=uniform(-1,1)", "y=int(0,4)"]


@pytest.fixture
def hosts(tmp_path):
    with procs.Hosts(tmp_path / "procs") as h:
        yield h


def trials_of(tree, name):
    """{trial number: (path, state)} of every trial job of the search, and the list of numbers
    as the job directories say them (so a number made twice would show twice)."""
    out, seen = {}, []
    base = os.path.join(str(tree), name)
    for entry in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, entry)
        if not os.path.isfile(os.path.join(path, jd.CONFIG)):
            continue
        state = read_state(path)
        assert state["dbdict"]["search"] == name
        assert int(entry) == state["dbdict"]["trial"], (entry, state["dbdict"])
        seen.append(state["dbdict"]["trial"])
        out[state["dbdict"]["trial"]] = (path, state)
    return out, seen


def define(tree, *extra, name="s", trials=6, exp="quadratic"):
    r = run_cli("search", tree, "-e", f"{EXP}:{exp}", *SPACE, "--metric", "loss", "--trials", trials,
                "--name", name, *extra)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == name
    return r


# ---------------------------------------------------------------- the definition

def test_search_prints_its_name_first_and_workers_run_every_trial(tree):
    r = run_cli("search", tree, "-e", f"{EXP}:quadratic", *SPACE, "kind={a,b}", "fixed=7",
                "--metric", "loss", "--trials", 5, "--seed", 3)
    assert r.returncode == 0, r.stderr
    name = r.stdout.splitlines()[0]
    assert name.startswith("search-")
    definition = json.loads(open(os.path.join(searches.search_dir(tree, name), "search.json")).read())
    assert definition["fixed"] == {"fixed": 7} and set(definition["space"]) == {"x", "y", "kind"}
    w = run_cli("work", tree, "-q")
    assert w.returncode == 0, w.stderr
    trials, seen = trials_of(tree, name)
    assert seen == [0, 1, 2, 3, 4]
    for path, state in trials.values():
        assert state["dbdict"]["status"] == "done"
        assert state["fixed"] == 7 and state["kind"] in ("a", "b") and 0 <= state["y"] <= 4
        assert -1 <= state["x"] <= 1
        config = jd.read_config(path)
        assert "trial" not in config and config["x"] == state["x"]  # the config: fixed + sampled keys
    q = run_cli("query", tree, f"dbdict.search={name}", "--columns", "dbdict.trial,loss", "--format", "json")
    assert sorted(row["dbdict.trial"] for row in json.loads(q.stdout)) == [0, 1, 2, 3, 4]
    s = run_cli("status", tree, "--format", "json")
    (summary,) = json.loads(s.stdout)["searches"]
    best = min(state["loss"] for _, state in trials.values())
    assert summary["name"] == name and summary["trials"] == 5 and summary["done"] == 5
    assert summary["running"] == summary["pruned"] == summary["failed"] == 0
    assert summary["best"]["value"] == best and read_state(summary["best"]["path"])["loss"] == best
    table = run_cli("status", tree)
    assert f"{name}: 5 of 5 trials" in table.stdout


@pytest.mark.parametrize("args, says", [
    (["--trials", "0"], "--trials must be"),
    (["--trials", "3", "--sampler", "anneal"], "--sampler 'anneal'"),
    (["--trials", "3", "z=uniform(2,1)"], "a < b"),
    (["--trials", "3", "z=loguniform(0,1)"], "0 < a < b"),
    (["--trials", "3", "z=int(1.5,3)"], "whole numbers"),
    (["--trials", "3", "z=choice()"], "at least one value"),
    (["--trials", "9", "--sampler", "grid", "z={1,2}"], "the grid has only"),
    (["--trials", "3", "--sampler", "grid", "z=uniform(0,1)"], "finite space"),
    (["--trials", "3", "--prune", "sometimes", "z=uniform(0,1)"], "--prune"),
    (["--trials", "3", "--name", "../up", "z=uniform(0,1)"], "--name"),
    (["--trials", "3", "--space", "/no/such/space.yaml"], "--space"),
])
def test_a_bad_space_budget_or_sampler_is_one_line_exit_2_and_writes_nothing(tree, args, says):
    r = run_cli("search", tree, "-e", f"{EXP}:quadratic", "--metric", "loss", *args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, r.stderr
    assert not os.path.exists(tree)


def test_space_file_and_python_api_and_budget_raise(tree, tmp_path):
    import dbdict_fs

    space = tmp_path / "space.yaml"
    space.write_text("x: uniform(-1, 1)\ny: {type: int, low: 0, high: 4}\nkind: [a, b]\nfixed: 3\n")
    r = run_cli("search", tree, "-e", f"{EXP}:quadratic", "--space", space, "--metric", "loss",
                "--trials", 3, "--name", "f")
    assert r.returncode == 0, r.stderr
    d = searches.read_definition(tree, "f")
    assert d["fixed"] == {"fixed": 3} and d["space"]["kind"] == {"type": "choice", "values": ["a", "b"]}
    name = dbdict_fs.search(tree, experiment=f"{EXP}:quadratic", space={"x": "uniform(-1,1)", "y": "int(0,4)"},
                            metric="loss", trials=2, name="api")
    assert name == "api" and searches.budget(tree, "api") == 2
    assert dbdict_fs.search(tree, name="api", trials=4) == "api" and searches.budget(tree, "api") == 4
    lower = run_cli("search", tree, "--name", "api", "--trials", 3)
    assert lower.returncode == 2 and "only be raised" in lower.stderr
    again = run_cli("search", tree, "-e", f"{EXP}:quadratic", *SPACE, "--metric", "loss", "--trials", 2,
                    "--name", "api")
    assert again.returncode == 2 and "exists" in again.stderr
    assert run_cli("work", tree, "-q").returncode == 0
    assert trials_of(tree, "api")[1] == [0, 1, 2, 3] and trials_of(tree, "f")[1] == [0, 1, 2]
    up = run_cli("search", tree, "--name", "api", "--trials", 7)
    assert up.returncode == 0 and up.stdout.splitlines()[0] == "api"
    assert run_cli("work", tree, "-q").returncode == 0
    assert trials_of(tree, "api")[1] == list(range(7))  # exactly the difference was added


# ---------------------------------------------------------------- samplers

DEF = {"name": "d", "seed": 5, "maximize": False, "metric": "loss",
       "space": {"x": {"type": "uniform", "low": -1, "high": 1}, "y": {"type": "int", "low": 0, "high": 4},
                 "c": {"type": "choice", "values": ["a", [1, 2], None]},
                 "lr": {"type": "loguniform", "low": 1e-4, "high": 1.0}}}


def history(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = searches._random_point(DEF["space"], rng)
        out.append({"n": i, "params": p, "status": "done" if i % 7 else "failed",
                    "value": (p["x"] - 0.3) ** 2 if i % 7 else None})
    out.append({"n": n, "params": searches._random_point(DEF["space"], rng), "status": "running", "value": None})
    return out


@pytest.mark.parametrize("kind", ["random", "tpe", "cmaes", "gp"])
def test_same_seed_and_same_trials_give_the_same_next_trial(kind):
    if kind != "random":
        pytest.importorskip("optuna")
    if kind == "gp":
        pytest.importorskip("torch")
    definition = dict(DEF, sampler=kind)
    trials = history(25)
    first = searches.sample(definition, 26, trials)
    assert searches.sample(definition, 26, json.loads(json.dumps(trials))) == first
    assert searches.inside(definition["space"], first)
    assert searches.sample(dict(definition, seed=6), 26, trials) != first


def test_grid_gives_each_point_once():
    definition = dict(DEF, sampler="grid", seed=0,
                      space={"y": {"type": "int", "low": 0, "high": 2}, "c": {"type": "choice", "values": ["a", "b"]}})
    points = [searches.sample(definition, n, []) for n in range(6)]
    assert sorted(json.dumps(p, sort_keys=True) for p in points) == sorted(
        json.dumps({"y": y, "c": c}, sort_keys=True) for y in range(3) for c in "ab")


def test_parallel_tpe_workers_do_not_ask_the_same_point():
    pytest.importorskip("optuna")
    definition = dict(DEF, sampler="tpe")
    trials = history(20)
    asked = []
    for n in range(21, 25):  # each asks with the ones before it running (the constant liar)
        p = searches.sample(definition, n, trials)
        trials.append({"n": n, "params": p, "status": "running", "value": None})
        asked.append(json.dumps(p, sort_keys=True))
    assert len(set(asked)) == 4


# ---------------------------------------------------------------- exactly once, with real processes

def env_for(host, **extra):
    env = dict(os.environ, DBDICT_HOST=host)
    for key in ("DBDICT_TEST_SEARCH_STOP", "DBDICT_TEST_BREAK_TRIAL_CLAIM"):
        env.pop(key, None)
    env.update(extra)
    return env


CLI = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]


def stopped_taker(tree, marker, lease, procs_to_end):
    """A worker on host a that wins trial number 0 and stops itself before writing its job."""
    a = subprocess.Popen(CLI + ["work", str(tree), "-q", "--lease", str(lease), "--heartbeat", str(lease / 6)],
                         env=env_for("host-a", DBDICT_TEST_SEARCH_STOP=f"took:{marker}"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs_to_end.append(a)
    pid = int(wait_for(lambda: os.path.exists(marker) and open(marker).read(), timeout=60,
                       what="the taker to stop after winning its number", detail=lambda: f"exit {a.poll()}"))
    wait_for(lambda: proc_state(pid) == "T", timeout=10, what="the taker to stop itself")
    return a


def test_a_taker_killed_between_its_number_and_its_job_loses_no_number(tree, tmp_path, procs_to_end):
    define(tree, trials=4)
    a = stopped_taker(tree, str(tmp_path / "took"), LEASE, procs_to_end)
    numbers = os.path.join(searches.search_dir(tree, "s"), "numbers")
    assert os.listdir(os.path.join(numbers, "0")) == ["claim.1"] and not trials_of(tree, "s")[1]
    a.kill()  # kill -9 right there: number 0 is claimed and has no job
    a.wait()
    b = subprocess.run(CLI + ["work", str(tree), "--wait", "-q", *SHORT], env=env_for("host-b"),
                       capture_output=True, text=True, timeout=120)
    assert b.returncode == 0, b.stderr
    trials, seen = trials_of(tree, "s")
    assert seen == [0, 1, 2, 3]
    assert trials[0][1]["dbdict"]["trial_claim"] == 2  # taken over after the lease, by observation
    assert all(t[1]["dbdict"]["status"] == "done" for t in trials.values())


def test_a_trial_whose_taker_died_after_writing_it_into_a_directory_marked_final_still_runs(
        tree, tmp_path, procs_to_end):
    define(tree, trials=2)
    assert run_cli("work", tree, "-q", "--max-jobs", 1).returncode == 0  # trial 0 done
    walk = run_cli("work", tree, "-q", *SHORT, env={"DBDICT_HOST": "host-c"})  # nothing but searches left:
    assert walk.returncode == 0  # it runs trial 1, and its walks mark the directory of trials final
    from dbdict_fs.discovery import mark_path

    assert os.path.exists(mark_path(os.path.join(str(tree), "s")))
    assert run_cli("search", tree, "--name", "s", "--trials", 3).returncode == 0
    a = subprocess.Popen(CLI + ["work", str(tree), "-q", *SHORT],
                         env=env_for("host-a", DBDICT_TEST_SEARCH_STOP=f"written:{tmp_path / 'w'}"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs_to_end.append(a)
    pid = int(wait_for(lambda: os.path.exists(tmp_path / "w") and open(tmp_path / "w").read(), timeout=60,
                       what="the taker to stop after writing trial 2"))
    wait_for(lambda: proc_state(pid) == "T", timeout=10, what="the taker to stop itself")
    a.kill()  # its job exists, the directory is still marked final, no live marker, no hint
    a.wait()
    assert read_state(os.path.join(str(tree), "s", "00002"))["dbdict"]["status"] == "ready"
    b = subprocess.run(CLI + ["work", str(tree), "--wait", "-q", *SHORT], env=env_for("host-b"),
                       capture_output=True, text=True, timeout=120)
    assert b.returncode == 0, b.stderr
    trials, seen = trials_of(tree, "s")
    assert seen == [0, 1, 2] and trials[2][1]["dbdict"]["status"] == "done"


@pytest.mark.parametrize("broken", [False, pytest.param(True, marks=pytest.mark.xfail(
    strict=True, reason="DBDICT_TEST_BREAK_TRIAL_CLAIM: every holder looks dead, so a live taker's "
                        "number is taken from it; this test must catch that"))])
def test_a_live_takers_number_is_never_taken_from_it(tree, tmp_path, procs_to_end, broken):
    define(tree, trials=3)
    a = stopped_taker(tree, str(tmp_path / "took"), 120.0, procs_to_end)  # paused, well inside its lease
    extra = {"DBDICT_TEST_BREAK_TRIAL_CLAIM": "1"} if broken else {}
    b = subprocess.run(CLI + ["work", str(tree), "-q", *SHORT], env=env_for("host-b", **extra),
                       capture_output=True, text=True, timeout=120)
    assert b.returncode == 0, b.stderr
    assert 0 not in trials_of(tree, "s")[0], "number 0 was taken from its live taker"
    assert trials_of(tree, "s")[1] == [1, 2]
    os.kill(a.pid, signal.SIGCONT)  # the taker wakes, writes trial 0 and runs it
    assert a.wait(120) == 0, a.stderr.read()
    trials, seen = trials_of(tree, "s")
    assert seen == [0, 1, 2] and trials[0][1]["dbdict"]["trial_claim"] == 1


def test_a_taker_paused_past_its_lease_writes_nothing(tree, tmp_path, procs_to_end):
    define(tree, trials=2)
    a = stopped_taker(tree, str(tmp_path / "took"), LEASE, procs_to_end)
    b = subprocess.run(CLI + ["work", str(tree), "--wait", "-q", *SHORT], env=env_for("host-b"),
                       capture_output=True, text=True, timeout=120)
    assert b.returncode == 0, b.stderr
    trials, seen = trials_of(tree, "s")
    assert seen == [0, 1] and trials[0][1]["dbdict"]["trial_claim"] == 2
    os.kill(a.pid, signal.SIGCONT)  # fenced: its number was taken again after its lease
    a.wait(60)
    assert trials_of(tree, "s")[1] == [0, 1]
    assert read_state(trials[0][0])["dbdict"]["epoch"] == read_state(trials[0][0])["dbdict"]["epoch"]


def search_chaos(tree, hosts, tmp_path, *, n_trials, n_workers, duration, seed, sides=None, lease=LEASE,
                 heartbeat=HEARTBEAT):
    """kill -9 and SIGSTOP (half of them longer than the lease) at random among `n_workers`
    --wait workers taking turns between `sides` [(the tree as a host sees it, host name)],
    while they run an `n_trials` search. Returns the counts."""
    rng = random.Random(seed)
    log = str(tmp_path / "runs.log")
    define(tree, f"log={log}", "sleep=0.3", trials=n_trials, exp="logged")
    sides = sides or [(str(tree), "host-a"), (str(tree), "host-b")]
    new_worker = procs.worker_starter(hosts, sides, lease, heartbeat)

    workers = [new_worker() for _ in range(n_workers)]
    counts = dict(kills=0, pauses=0, long_pauses=0)
    paused = {}
    start = time.monotonic()
    next_action = start + rng.uniform(0.3, 1.0)
    while time.monotonic() - start < duration and len(trials_of(tree, "s")[1]) < n_trials:
        now = time.monotonic()
        for w, at in list(paused.items()):
            if now >= at:
                w.signal(signal.SIGCONT)
                del paused[w]
        if now >= next_action:
            next_action = now + rng.uniform(0.2, 0.7)
            candidates = [w for w in workers if w.running() and w not in paused]
            if candidates:
                w = rng.choice(candidates)
                if rng.random() < 0.45:
                    w.kill9()
                    counts["kills"] += 1
                    workers.remove(w)
                    workers.append(new_worker())
                else:
                    pause = rng.uniform(0.1, 1.0) if rng.random() < 0.5 else rng.uniform(lease + 0.5, 2 * lease)
                    counts["pauses"] += 1
                    counts["long_pauses"] += pause > lease
                    w.signal(signal.SIGSTOP)
                    paused[w] = now + pause
        time.sleep(0.02)
    for w in paused:
        w.signal(signal.SIGCONT)
    if not any(w.running() for w in workers):
        workers.append(new_worker())
    for w in workers:  # --wait workers leave once nothing is runnable, running or left to take
        assert w.wait(n_trials * 2 + 120) == 0, w.output()
    trials, seen = trials_of(tree, "s")
    assert seen == list(range(n_trials)), seen  # every number once: none lost, none twice
    d = searches.read_definition(tree, "s")
    runs = read_log(log)
    for n, (path, state) in trials.items():
        listing = jd.list_job(path)
        assert state["dbdict"]["status"] == "done", (path, state["dbdict"])
        assert state["dbdict"]["epoch"] == listing.claim_epoch  # committed under its top claim
        assert searches.inside(d["space"], {k: searches.get_dotted(state, k) for k in d["space"]})
        assert state["loss"] == (state["x"] - 0.3) ** 2 + (state["y"] - 2) ** 2
        assert n in runs
        ndir = os.path.join(searches.search_dir(tree, "s"), "numbers", str(n))
        assert 1 <= state["dbdict"]["trial_claim"] <= jd.list_job(ndir).claim_epoch
    assert sorted(runs) == list(range(n_trials))
    assert not os.path.exists(os.path.join(str(tree), "s", f"{n_trials:05d}"))
    counts.update(trials=n_trials, executions=sum(len(p) for p in runs.values()),
                  numbers_taken_again=sum(t[1]["dbdict"]["trial_claim"] > 1 for t in trials.values()))
    print("\nsearch chaos:", json.dumps(counts, sort_keys=True))
    return counts


def test_search_chaos_kill9_and_sigstop_60_trials(tree, hosts, tmp_path):
    counts = search_chaos(tree, hosts, tmp_path, n_trials=60, n_workers=4, duration=25, seed=20261204)
    assert counts["kills"] >= 3 and counts["pauses"] >= 3, counts
    up = run_cli("search", tree, "--name", "s", "--trials", 66)  # raising adds exactly the difference
    assert up.returncode == 0, up.stderr
    w = run_cli("work", tree, "-q", *SHORT, env={"DBDICT_HOST": "host-a"})
    assert w.returncode == 0, w.stderr
    assert trials_of(tree, "s")[1] == list(range(66))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_search_chaos_long(tree, hosts, tmp_path, seed):
    counts = search_chaos(tree, hosts, tmp_path, n_trials=200, n_workers=8, duration=90, seed=seed)
    assert counts["kills"] >= 10 and counts["long_pauses"] >= 3, counts


def test_search_chaos_on_two_caching_mounts(tmp_path, hosts):
    """The same chaos with the two hosts' workers on two counting FUSE mounts of one directory,
    each with a 1 s attribute cache (tests/test_multihost.py), L = 5 s > 4 x acregmax."""
    fsim = pytest.importorskip("fsim")
    reason = fsim.available()
    if reason is not None:
        pytest.skip(f"counting FUSE filesystem unavailable: {reason}")
    backing = tmp_path / "backing"
    backing.mkdir()
    with fsim.Host(str(backing), attr_timeout=1.0) as a, fsim.Host(str(backing), attr_timeout=1.0) as b:
        tree = os.path.join(str(backing), "tree")
        counts = search_chaos(tree, hosts, tmp_path, n_trials=40, n_workers=4, duration=25, seed=7,
                              sides=[(a.path("tree"), "a"), (b.path("tree"), "b")], lease=5.0, heartbeat=0.5)
    assert counts["kills"] >= 2, counts


# ---------------------------------------------------------------- early stopping

def test_asha_prunes_trials_which_end_pruned_and_stay_final_until_requeued(tree):
    r = run_cli("search", tree, "-e", f"{EXP}:curve", "x=uniform(-1,1)", "steps=27", "step_time=0.02",
                "--metric", "loss",
                "--trials", 12, "--prune", "asha", "--name", "a", "--seed", 1)
    assert r.returncode == 0, r.stderr
    w = run_cli("work", tree, "-q")
    assert w.returncode == 0, w.stderr
    trials, seen = trials_of(tree, "a")
    assert seen == list(range(12))
    pruned = [n for n, (_, s) in trials.items() if s["dbdict"]["status"] == "pruned"]
    done = [n for n, (_, s) in trials.items() if s["dbdict"]["status"] == "done"]
    assert pruned and done and len(pruned) + len(done) == 12
    for n in pruned:
        path, state = trials[n]
        assert state["stopped"] == "prune" and state["dbdict"]["pruned_at_step"] in (2, 8)  # not 26: the last
        steps = [row[1] for row in __import__("dbdict_fs").history(path)]
        assert steps and max(steps) >= state["dbdict"]["pruned_at_step"]  # its curve is kept
    again = run_cli("work", tree)  # final: never retried
    assert again.returncode == 0 and "no runnable job" in again.stderr, again.stderr
    s = json.loads(run_cli("status", tree, "--format", "json").stdout)["searches"][0]
    assert (s["pruned"], s["done"]) == (len(pruned), len(done))
    rq = run_cli("requeue", tree, "--status", "pruned", f"dbdict.trial={pruned[0]}")
    assert rq.returncode == 0, rq.stderr
    assert run_cli("work", tree, "-q").returncode == 0
    state = read_state(trials[pruned[0]][0])
    assert state["dbdict"]["status"] == "done" and "final_loss" in state  # ran to the end this time


def test_a_trial_that_ignores_prune_is_stopped_after_grace(tree):
    r = run_cli("search", tree, "-e", f"{EXP}:curve_ignoring_prune", "x=uniform(-1,1)", "--metric", "loss",
                "--trials", 3, "--prune", "asha", "--name", "g")
    assert r.returncode == 0, r.stderr
    # two trials report good values first, up to the second rung (one report at step 8 passes
    # both), so the next one is the worst of three at the first rung, which others went past
    for n in (98, 99):
        searches.Pruner(searches.search_dir(tree, "g"), searches.read_definition(tree, "g"), n).decide(8, 1.0)
    w = run_cli("work", tree, "-q", "--max-jobs", 1, "--grace", 1)
    assert w.returncode == 0, w.stderr
    (path, state), = trials_of(tree, "g")[0].values()
    assert state["dbdict"]["status"] == "pruned" and state["dbdict"]["pruned_at_step"] == 2
    assert "did not stop within --grace" in (state["dbdict"].get("error") or "")


@pytest.mark.parametrize("rule, maximize, values, mine, prunes", [
    ("median", False, [1, 2, 3, 4], 9, False),      # too few others yet
    ("median", False, [1, 2, 3, 4, 5], 2, False),
    ("median", False, [1, 2, 3, 4, 5], 4, True),
    ("median", True, [1, 2, 3, 4, 5], 4, False),
    # asha: a trial that reported 3 at step 8 is at the rung too (it went past it)
    ("asha", False, [1, 2, 3, 4, 5], 1.5, False),   # 7 values: the top 2 go on
    ("asha", False, [1, 2, 3, 4, 5], 2.5, True),
    ("asha", True, [1, 2, 3, 4, 5], 4.5, False),
    ("asha", False, [2, 3], 7, True),               # 4 values: only the best goes on
    ("asha", False, [2], 7, True),                  # 3 values: the fewest that decide
    ("asha", False, [], 7, False),                  # 2 values: too few to prune anyone
])
def test_pruning_rules(tmp_path, rule, maximize, values, mine, prunes):
    d = {"metric": "loss", "prune": rule, "maximize": maximize}
    if rule == "asha":  # someone went past step 2 (a report at step 8 passes rung 2 too)
        searches.Pruner(str(tmp_path), d, 99).decide(8, -3 if maximize else 3)
    for n, v in enumerate(values):
        searches.Pruner(str(tmp_path), d, n).decide(2, -v if maximize else v)  # the others' values
    p = searches.Pruner(str(tmp_path), d, 50)
    assert p.decide(2, -mine if maximize else mine) is prunes
    assert len(os.listdir(tmp_path / "rungs" / "2")) == len(values) + 1 + (rule == "asha")


def test_asha_rungs_steps_reached_sparsely_and_no_pruning_at_a_rung_nobody_went_past(tmp_path):
    d = {"metric": "loss", "prune": "asha", "maximize": False}
    assert [searches.asha_rung_step(k) for k in range(4)] == [2, 8, 26, 80]
    rungs = tmp_path / "rungs"

    def pruner(n):
        return searches.Pruner(str(tmp_path), d, n)

    for n in range(3):  # steps 0, 1 never decide; a report at step 10 passes rungs 2 and 8 with its value
        p = pruner(n)
        assert not p.decide(0, 0.1) and not p.decide(1, 0.1)
        assert n > 0 or not os.path.exists(rungs)
        assert not p.decide(10, 0.1)
    assert sorted(os.listdir(rungs)) == ["2", "8"] and len(os.listdir(rungs / "8")) == 3
    assert pruner(3).decide(8, 5.0)  # its first report past step 2: the worst of 4 at rung 2, pruned there
    assert "3~5.0" in os.listdir(rungs / "2") and "3~5.0" not in os.listdir(rungs / "8")
    late = pruner(4)
    assert not late.decide(2, 0.1)
    assert not late.decide(8, 5.0)  # the worst of 4 at rung 8, but nobody has reached rung 26 yet
    for n in (5, 6):
        assert not pruner(n).decide(26, 0.1)
    again = pruner(7)
    assert not again.decide(2, 0.1)
    assert again.decide(8, 5.0)  # the same value, now that trials went past rung 8
    top = pruner(8)
    assert not top.decide(2, 0.1) and not top.decide(8, 0.1)
    assert not top.decide(26, 9.0)  # the worst of 3 at rung 26, the last step: nobody went past it
    resumed = pruner(0)  # trial 0 resumed, reporting again at rung 2: counted once, with its best
    assert not resumed.decide(2, 0.05)
    assert {"0~0.1", "0~0.05"} <= set(os.listdir(rungs / "2"))


def test_asha_never_prunes_a_trial_at_a_rung_with_fewer_than_three_values(tree):
    """Two trials one after the other: trial 1 starts worse than trial 0 and ends better. The
    eager rule (Optuna's, with no bootstrap: of two values only the best goes on) pruned it at
    its first rung; with fewer than three values at a rung nobody is pruned."""
    r = run_cli("search", tree, "-e", f"{EXP}:crossing", "x={0,1}", "steps=27", "--metric", "loss",
                "--trials", 2, "--sampler", "grid", "--prune", "asha", "--name", "c")
    assert r.returncode == 0, r.stderr
    w = run_cli("work", tree, "-q")
    assert w.returncode == 0, w.stderr
    trials, seen = trials_of(tree, "c")
    assert seen == [0, 1]
    assert [trials[n][1]["x"] for n in (0, 1)] == [0, 1]
    assert [trials[n][1]["dbdict"]["status"] for n in (0, 1)] == ["done", "done"]
    assert trials[1][1]["loss"] < trials[0][1]["loss"]
    best = json.loads(run_cli("status", tree, "--format", "json").stdout)["searches"][0]["best"]
    assert best["path"] == trials[1][0]


def test_query_status_and_a_random_search_never_import_optuna(tree):
    define(tree, trials=2)
    for argv in (["work", str(tree), "-q"], ["status", str(tree)], ["query", str(tree)]):
        code = ("import sys; from dbdict_fs.cli import main; rc = main(sys.argv[1:]); "
                "sys.exit(rc or (3 if 'optuna' in sys.modules else 0))")
        r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (argv, r.stderr)
