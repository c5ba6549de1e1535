"""Searches (DESIGN.md 11, issue 20): how good, how costly, side by side in one run.

    python bench/search.py                          # everything below, 5 seeds
    python bench/search.py --only optimum --seeds 5 --trials 40
    python bench/search.py --only prune
    python bench/search.py --only ask
    python bench/search.py --only journal --seeds 1

optimum: best value after N trials (median over seeds, lower is better) on Branin (2-D, min
0.397887), Hartmann-6 (6-D, min -3.32237) and, when scikit-learn is importable, the
validation error of an SVM on the digits data (log C, log gamma). Methods: dbdict tpe with 4
`dbdict work` processes sharing a tree; Optuna's own TPE in one process (study.optimize);
random search (dbdict's random sampler, 4 workers).

prune: a learning-curve objective, 27 steps of 20 ms per trial, a random sampler (the same points
for every method, since a random trial's point depends only on the seed and its number), 2
workers: steps run and best final value for --prune none, median and asha.

ask: the cost of one ask of dbdict's tpe (read every trial's state + rebuild the Optuna study
+ ask) and of the number claim, at 100 and 2,000 finished trials, in ms; metadata operations
counted with strace where it exists.

journal: the anchor a user would pick instead: N processes running Optuna's study.optimize on
one JournalFileStorage file (MaxTrialsCallback for the budget) vs N `dbdict work --wait`
workers on a tpe search of the same budget, under the same kill -9 schedule (each killed
process replaced): trials complete, lost (left RUNNING), beyond the budget, executions.
On local disk only: the NFS failures reported for JournalFileStorage are not reproduced here.

Needs Optuna (pip install 'dbdict_fs[search]'). Numbers are printed, never asserted.
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
HERE = os.path.abspath(__file__)

# ---------------------------------------------------------------- objectives (also experiments)

BRANIN_SPACE = {"x1": "uniform(-5,10)", "x2": "uniform(0,15)"}
HARTMANN_SPACE = {f"x{i}": "uniform(0,1)" for i in range(1, 7)}
DIGITS_SPACE = {"log_c": "uniform(-3,3)", "log_gamma": "uniform(-5,-1)"}


def branin(p):
    x1, x2 = p["x1"], p["x2"]
    b, c, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1 ** 2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


_A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
_P = [[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
      [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]]
_ALPHA = [1.0, 1.2, 3.0, 3.2]


def hartmann6(p):
    x = [p[f"x{i}"] for i in range(1, 7)]
    return -sum(_ALPHA[i] * math.exp(-sum(_A[i][j] * (x[j] - _P[i][j] * 1e-4) ** 2 for j in range(6)))
                for i in range(4))


def digits(p):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    clf = SVC(C=10 ** p["log_c"], gamma=10 ** p["log_gamma"])
    return 1.0 - cross_val_score(clf, X, y, cv=3).mean()


OBJECTIVES = {"branin": (branin, BRANIN_SPACE), "hartmann6": (hartmann6, HARTMANN_SPACE),
              "digits": (digits, DIGITS_SPACE)}


def experiment(state, channel):
    """The dbdict experiment: state.objective names the function; writes state.value."""
    fn, space = OBJECTIVES[state.objective]
    state.value = fn({k: state[k] for k in space})


def curve(state, channel):
    """A learning curve: loss(step) = final + (0.5 + x2) / (step + 1); final = branin / 100.
    Trials that start badly can end well (x2 slows the start), so pruning has a cost."""
    final = branin({"x1": state.x1, "x2": state.x2}) / 100.0
    steps = int(state.steps)
    for step in range(steps):
        time.sleep(state.step_time)  # a training step takes a while: a decision arrives in time
        loss = final + (0.5 + state.x2 / 15) / (step + 1)
        channel.log(step, loss=loss)
        if channel() == "prune":
            return
    state.final = final


# ---------------------------------------------------------------- running things

def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.dirname(HERE)]))
    env.pop("DBDICT_HOST", None)
    return env


def dbdict(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "dbdict_fs.cli", *map(str, args)], env=_env(),
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"dbdict {' '.join(map(str, args))}: {r.stderr}")
    return r


def run_workers(tree, n, extra=()):
    procs = [subprocess.Popen([sys.executable, "-m", "dbdict_fs.cli", "work", tree, "--wait", "-q", *extra],
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a worker failed: {err}")


def dbdict_search(objective, sampler, seed, trials, workers, base):
    from dbdict_fs import searches
    from dbdict_fs.index import build_index

    tree = os.path.join(base, f"{objective}-{sampler}-{seed}")
    space = dict(OBJECTIVES[objective][1], objective=objective)
    searches.search(tree, experiment=f"{HERE}:experiment", space=space, metric="value", trials=trials,
                    sampler=sampler, seed=seed, name="s")
    t0 = time.monotonic()
    run_workers(tree, workers)
    seconds = time.monotonic() - t0
    rows = build_index(tree).sql('select value from jobs where "dbdict.status" = \'done\'')
    values = [r["value"] for r in rows]
    assert len(values) == trials, (objective, sampler, seed, len(values))
    return min(values), seconds


def optuna_tpe(objective, seed, trials):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fn, space = OBJECTIVES[objective]
    from dbdict_fs.searches import split_space

    _, dists = split_space(space)

    def objective_fn(trial):
        p = {k: trial.suggest_float(k, d["low"], d["high"], log=d["type"] == "loguniform") for k, d in dists.items()}
        return fn(p)

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    t0 = time.monotonic()
    study.optimize(objective_fn, n_trials=trials)
    return study.best_value, time.monotonic() - t0


def bench_optimum(args, base):
    objectives = args.objectives.split(",")
    if "digits" in objectives:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            print("digits: scikit-learn is not importable here: not measured")
            objectives.remove("digits")
    print(f"\n## best value after {args.trials} trials, median over {args.seeds} seeds (lower is better)\n")
    print("| objective | dbdict tpe, 4 workers | Optuna TPE, 1 process | random, 4 workers | dbdict tpe wall s |")
    print("|---|---|---|---|---|")
    out = {}
    for objective in objectives:
        res = {"tpe": [], "optuna": [], "random": [], "tpe_s": []}
        for seed in range(args.seeds):
            best, secs = dbdict_search(objective, "tpe", seed, args.trials, 4, base)
            res["tpe"].append(best)
            res["tpe_s"].append(secs)
            res["optuna"].append(optuna_tpe(objective, seed, args.trials)[0])
            res["random"].append(dbdict_search(objective, "random", seed, args.trials, 4, base)[0])
        med = {k: statistics.median(v) for k, v in res.items()}
        out[objective] = res
        print(f"| {objective} | {med['tpe']:.4g} | {med['optuna']:.4g} | {med['random']:.4g} | {med['tpe_s']:.0f} |",
              flush=True)
    return out


def bench_prune(args, base):
    from dbdict_fs import history, searches
    from dbdict_fs.index import build_index

    print(f"\n## early stopping: {args.prune_trials} trials x 27 steps, random sampler, 2 workers, "
          f"median over {args.seeds} seeds\n")
    print("| prune | steps run (median) | saved vs none | best final value (median) | pruned trials (median) |")
    print("|---|---|---|---|---|")
    results = {}
    for rule in args.rules.split(","):
        steps, bests, pruned = [], [], []
        for seed in range(args.seeds):
            tree = os.path.join(base, f"curve-{rule}-{seed}")
            searches.search(tree, experiment=f"{HERE}:curve", space={"x1": "uniform(-5,10)", "x2": "uniform(0,15)",
                                                                      "steps": 27, "step_time": 0.02},
                            metric="loss", trials=args.prune_trials, seed=seed, prune=rule, name="s")
            run_workers(tree, 2)
            rows = build_index(tree).sql('select "dbdict.path" as p, "dbdict.status" as s, final from jobs')
            steps.append(sum(len(history(r["p"])) for r in rows))
            bests.append(min(r["final"] for r in rows if r["s"] == "done"))
            pruned.append(sum(r["s"] == "pruned" for r in rows))
        results[rule] = (statistics.median(steps), statistics.median(bests), statistics.median(pruned))
    full = results["none"][0] if "none" in results else float("nan")
    for rule, (s, b, p) in results.items():
        print(f"| {rule} | {s:.0f} | {1 - s / full:.0%} | {b:.4g} | {p:.0f} |")
    return results


def bench_ask(args, base):
    from dbdict_fs import booking, searches
    from dbdict_fs.create import _write_job
    from dbdict_fs.values import config_hash

    print("\n## the cost of an ask (dbdict tpe): read every trial + rebuild the study + ask\n")
    print("| finished trials | read trials ms | Optuna rebuild + ask ms | number claim ms | metadata ops per ask |")
    print("|---|---|---|---|---|")
    searches._optuna_import()
    for n in (100, 2000):
        tree = os.path.join(base, f"ask-{n}")
        searches.search(tree, experiment=f"{HERE}:experiment", space=dict(BRANIN_SPACE, objective="branin"),
                        metric="value", trials=n + 10, sampler="tpe", name="s")
        d = searches.read_definition(tree, "s")
        import random

        rng = random.Random(0)
        for i in range(n):  # finished trials, written directly (a run would take minutes)
            p = searches._random_point(d["space"], rng)
            config = dict(p, objective="branin")
            exp = d["experiment"]
            _write_job(tree, os.path.join("s", f"{i:05d}"), config, exp, [], config_hash(config, exp), 1.0,
                       extra_book={"search": "s", "trial": i, "trial_claim": 1})
            job = searches.trial_path(tree, "s", i)
            state = json.load(open(os.path.join(job, "state.0.yaml")))
            state["dbdict"]["status"] = "done"
            state["value"] = branin(p)
            with open(os.path.join(job, "state.0.yaml"), "w") as f:
                json.dump(state, f)
            os.makedirs(os.path.join(searches.search_dir(tree, "s"), "numbers", str(i)))
            open(os.path.join(searches.search_dir(tree, "s"), "numbers", f"done.{i}"), "w").close()
        t0 = time.perf_counter()
        trials = searches.read_trials(tree, d)
        t1 = time.perf_counter()
        searches.sample(d, n, trials)
        t2 = time.perf_counter()
        t3 = time.perf_counter()  # a number claim: list numbers/, mkdir, token, link (booking.link_claim)
        ndir = os.path.join(searches.search_dir(tree, "s"), "numbers", str(n))
        os.listdir(os.path.dirname(ndir))
        os.makedirs(ndir)
        booking.link_claim(ndir, 1, booking.make_token(booking.Identity.current(), 600, 30, "trial"))
        t4 = time.perf_counter()
        ops = _strace_ops(tree)
        print(f"| {n} | {(t1 - t0) * 1e3:.0f} | {(t2 - t1) * 1e3:.0f} | {(t4 - t3) * 1e3:.1f} | {ops} |", flush=True)


def _strace_ops(tree):
    """Metadata operations of one ask's read of the trials (strace -f: opens, stats, listings
    after a marker write), or why they were not counted."""
    if shutil.which("strace") is None:
        return "not counted (no strace)"
    code = (f"import sys, os; sys.path.insert(0, {ROOT!r}); from dbdict_fs import searches; "
            f"d = searches.read_definition({tree!r}, 's'); os.write(2, b'ASK'); "
            f"searches.read_trials({tree!r}, d)")
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        subprocess.run(["strace", "-f", "-o", out.name, "-e", "trace=%file,getdents64,write",
                        sys.executable, "-c", code], capture_output=True, text=True, env=_env())
        lines = out.read().splitlines()
    start = next((i for i, line in enumerate(lines) if 'write(2, "ASK"' in line), None)
    if start is None:
        return "not counted (strace gave no marker)"
    return sum(1 for line in lines[start + 1:] if not line.split(" ", 1)[-1].startswith(("+++", "---")))


def sleepy(state, channel):
    """Branin after `sleep` s, appending "<trial> <pid>" to `log` (executions per trial)."""
    with open(state.log, "a") as f:
        f.write(f"{state.dbdict['trial']} {os.getpid()}\n")
    time.sleep(state.sleep)
    state.value = branin({"x1": state.x1, "x2": state.x2})


OPTUNA_WORKER = r"""
import sys, time, optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
sys.path.insert(0, sys.argv[3])
from search import branin
optuna.logging.set_verbosity(optuna.logging.ERROR)
storage = JournalStorage(JournalFileBackend(sys.argv[1]))
study = optuna.load_study(study_name="bench", storage=storage)
budget = int(sys.argv[2])
def objective(trial):
    p = {"x1": trial.suggest_float("x1", -5, 10), "x2": trial.suggest_float("x2", 0, 15)}
    time.sleep(float(sys.argv[4]))
    return branin(p)
study.optimize(objective, callbacks=[MaxTrialsCallback(budget, states=(TrialState.COMPLETE,))])
"""


def _chaos(start, n, seconds, seed, stop_when):
    """Start n processes (start(i) -> Popen), kill -9 one at random every 0.5-1.5 s for
    `seconds` and start a replacement; then wait for all. Returns kills."""
    import random
    import signal as sig

    rng = random.Random(seed)
    procs = [start(i) for i in range(n)]
    kills, t0 = 0, time.monotonic()
    next_kill = t0 + rng.uniform(0.5, 1.5)
    while time.monotonic() - t0 < seconds and not stop_when():
        if time.monotonic() >= next_kill:
            next_kill = time.monotonic() + rng.uniform(0.5, 1.5)
            alive = [p for p in procs if p.poll() is None]
            if alive:
                victim = rng.choice(alive)
                victim.send_signal(sig.SIGKILL)
                victim.wait()
                kills += 1
                procs.remove(victim)
                procs.append(start(len(procs) + kills))
        time.sleep(0.02)
    for p in procs:
        p.wait(600)
    return kills


def bench_journal(args, base):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from dbdict_fs import searches

    budget, n, sleep, seconds = args.journal_trials, 4, 0.3, 12
    print(f"\n## {n} processes, budget {budget}, one kill -9 every 0.5-1.5 s for {seconds} s "
          f"(each replaced), same schedule (local disk)\n")
    print("| storage | trials complete | not complete (Optuna: left RUNNING; dbdict: failed) | beyond budget "
          "| executions | kills |")
    print("|---|---|---|---|---|---|")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for seed in range(args.seeds if args.only == "journal" else 1):
        journal = os.path.join(base, f"journal-{seed}.log")
        optuna.create_study(study_name="bench", storage=JournalStorage(JournalFileBackend(journal)))
        study_done = lambda: False  # noqa: E731 - the same schedule for both
        kills = _chaos(lambda i: subprocess.Popen([sys.executable, "-c", OPTUNA_WORKER, journal, str(budget),
                                                   os.path.dirname(HERE), str(sleep)], env=_env(),
                                                  stderr=subprocess.DEVNULL),
                       n, seconds, seed, study_done)
        trials = optuna.load_study(study_name="bench", storage=JournalStorage(JournalFileBackend(journal))).trials
        states = [t.state.name for t in trials]
        print(f"| Optuna JournalFileStorage | {states.count('COMPLETE')} | {states.count('RUNNING')} | "
              f"{max(0, len(trials) - budget)} | {len(trials)} | {kills} |", flush=True)

        tree, log = os.path.join(base, f"dbdict-{seed}"), os.path.join(base, f"runs-{seed}.log")
        searches.search(tree, experiment=f"{HERE}:sleepy", space=dict(BRANIN_SPACE, log=log, sleep=sleep),
                        metric="value", trials=budget, sampler="tpe", seed=seed, name="s")
        argv = ["work", tree, "--wait", "-q", "--lease", "3", "--heartbeat", "0.5", "--max-attempts", "20"]
        kills = _chaos(lambda i: subprocess.Popen([sys.executable, "-m", "dbdict_fs.cli", *argv], env=_env(),
                                                  stderr=subprocess.DEVNULL),
                       n, seconds, seed, study_done)
        names = sorted(e for e in os.listdir(os.path.join(tree, "s")) if e.isdigit())
        from dbdict_fs import jobdir as jd

        statuses = [jd.read_latest_state(os.path.join(tree, "s", e))[1]["dbdict"]["status"] for e in names]
        executions = sum(1 for _ in open(log)) if os.path.exists(log) else 0
        print(f"| dbdict tpe, 4 workers | {statuses.count('done')} | {len(names) - statuses.count('done')} | "
              f"{max(0, len(names) - budget)} | {executions} | {kills} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--prune-trials", type=int, default=30)
    ap.add_argument("--journal-trials", type=int, default=40)
    ap.add_argument("--objectives", default="branin,hartmann6,digits", help="the optimum bench's objectives")
    ap.add_argument("--rules", default="none,median,asha", help="the --prune rules the prune bench compares")
    ap.add_argument("--only", choices=("optimum", "prune", "ask", "journal"))
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="dbdict-bench-search-")
    try:
        if args.only in (None, "optimum"):
            bench_optimum(args, base)
        if args.only in (None, "prune"):
            bench_prune(args, base)
        if args.only in (None, "ask"):
            bench_ask(args, base)
        if args.only in (None, "journal"):
            bench_journal(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
