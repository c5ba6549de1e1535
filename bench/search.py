"""Searches (DESIGN.md 11, issue 20): how good, how costly, side by side in one run.

    python bench/search.py                          # everything below, 5 seeds
    python bench/search.py --only optimum --seeds 10 --trials 40
    python bench/search.py --only optimum --mode sim --sim-seeds 50
    python bench/search.py --only prune --seeds 10
    python bench/search.py --only ask
    python bench/search.py --only journal --seeds 1

Every table gives median [IQR] over seeds and, where two methods are compared, the two-sided
Mann-Whitney U p-value over the seeds (exact without ties at these sizes, else the normal
approximation): a large p is "within noise", a small one a real difference.

optimum: best value after N trials (lower is better) on Branin (2-D, min 0.397887), Hartmann-6
(6-D, min -3.32237) and, when scikit-learn is importable, the 3-fold validation error of an
SVM on the digits data (log C, log gamma). Methods:
  - dbdict tpe, 4 workers: 4 real `dbdict work --wait` processes sharing a tree (--mode real);
  - Optuna TPE as shipped (TPESampler(seed=s): 10 startup trials), one process, study.optimize;
  - Optuna TPE with dbdict's startup (TPESampler(seed=s, n_startup_trials=5)), one process;
  - random search: dbdict's random sampler, 4 real workers.
--mode sim runs dbdict's tpe in one process instead (searches.sample, the function a worker
calls, with 4 simulated workers whose trials take 0.5-1.5 time units, so each ask sees about 3
running trials), for many seeds at little cost; its rows say "4 simulated workers".

prune: a learning-curve objective, 27 steps of 20 ms per trial, 30 trials of a random sampler
(the same points for every rule, since a random trial's point depends only on the seed and
its number), 2 real workers: steps run, the best final value (the metric at the last step of
the trials that finished), and in how many seeds the pruned search kept the unpruned
search's best trial, for --prune none, median and asha. Two curves: `curve`, made up (loss =
branin/100 + (0.5 + x2/15)/(step+1): trials that start badly can end well) and `sgd`, real
(scikit-learn's SGDClassifier on digits, one partial_fit per step, validation error; log
alpha, log eta0). --mode sim runs the same Pruner in one process with 2 simulated workers.

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
    """A learning curve: loss(step) = final + (0.5 + x2/15) / (step + 1), final = branin / 100.
    Trials that start badly can end well (x2 slows the start), so pruning has a cost. The
    trial's result is the loss at its last step."""
    loss = None
    for step in range(int(state.steps)):
        time.sleep(state.step_time)  # a training step takes a while: a decision arrives in time
        loss = curve_loss(state, step)
        channel.log(step, loss=loss)
        if channel() == "prune":
            return
    state.loss = loss


def curve_loss(p, step):
    return branin({"x1": p["x1"], "x2": p["x2"]}) / 100.0 + (0.5 + p["x2"] / 15) / (step + 1)


_DIGITS_SPLIT = []


def digits_split():
    if not _DIGITS_SPLIT:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        X, y = load_digits(return_X_y=True)
        _DIGITS_SPLIT.extend(train_test_split(X / 16.0, y, test_size=0.3, random_state=0))
    return _DIGITS_SPLIT


def sgd_curve(p, steps):
    """A real learning curve, one value per step: an SGD linear classifier on the digits data
    (70/30 split), one partial_fit per step, the validation error after it."""
    import warnings

    from sklearn.linear_model import SGDClassifier

    Xtr, Xva, ytr, yva = digits_split()
    clf = SGDClassifier(alpha=10 ** p["log_alpha"], learning_rate="invscaling", eta0=10 ** p["log_eta0"],
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a large eta0 diverges: that is a bad trial, not an error
        for _ in range(steps):
            clf.partial_fit(Xtr, ytr, classes=list(range(10)))
            yield 1.0 - clf.score(Xva, yva)


def sgd(state, channel):
    """The sgd curve as a dbdict experiment: logs err at each step, sleeping step_time first
    (an epoch takes a while); the result is the error at the last step."""
    err = None
    for step, err in enumerate(sgd_curve(state, int(state.steps))):
        time.sleep(state.step_time)
        channel.log(step, err=err)
        if channel() == "prune":
            return
    state.err = err


CURVES = {  # name: (experiment, metric, space, the curve as a function of (params, steps))
    "curve": (curve, "loss", {"x1": "uniform(-5,10)", "x2": "uniform(0,15)"},
              lambda p, steps: [curve_loss(p, k) for k in range(steps)]),
    "sgd": (sgd, "err", {"log_alpha": "uniform(-6,-1)", "log_eta0": "uniform(-4,0)"},
            lambda p, steps: list(sgd_curve(p, steps))),
}


# ---------------------------------------------------------------- statistics

def quartiles(values):
    """(q1, median, q3) by linear interpolation (statistics.quantiles' 'inclusive' method)."""
    v = sorted(values)
    if len(v) == 1:
        return v[0], v[0], v[0]
    q1, q2, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return q1, q2, q3


def summary(values, fmt="{:.4g}"):
    """'median [q1, q3]' of the values over seeds."""
    q1, q2, q3 = quartiles(values)
    return f"{fmt.format(q2)} [{fmt.format(q1)}, {fmt.format(q3)}]"


def mann_whitney_p(a, b):
    """Two-sided p-value of the Mann-Whitney U test of samples a and b: exact (the
    distribution of U counted) when there are no ties and both have at most 20 values, else
    the normal approximation with the tie and continuity corrections (as scipy.stats)."""
    n1, n2 = len(a), len(b)
    if not n1 or not n2:
        return float("nan")
    pooled = sorted((v, i) for i, v in enumerate(list(a) + list(b)))
    ranks = [0.0] * (n1 + n2)
    ties, i = [], 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[pooled[k][1]] = (i + j) / 2 + 1
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    u = max(u1, n1 * n2 - u1)
    if not ties and max(n1, n2) <= 20:
        counts = _u_counts(n1, n2)  # ways to reach each U, of comb(n1 + n2, n1)
        total = sum(counts)
        return min(1.0, 2 * sum(counts[int(round(u)):]) / total)
    mu = n1 * n2 / 2
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - sum(t ** 3 - t for t in ties) / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (u - mu - 0.5) / math.sqrt(var)
    return min(1.0, math.erfc(z / math.sqrt(2)))


def _u_counts(n1, n2):
    """counts[u] = the number of orderings of n1 x's and n2 y's whose U statistic is u."""
    table = {(0, j): [1] for j in range(n2 + 1)}
    for i in range(1, n1 + 1):
        table[(i, 0)] = [1]
        for j in range(1, n2 + 1):
            left, down = table[(i - 1, j)], table[(i, j - 1)]  # the largest value is an x (U += j) or a y
            out = [0] * (i * j + 1)
            for u, c in enumerate(left):
                out[u + j] += c
            for u, c in enumerate(down):
                out[u] += c
            table[(i, j)] = out
    return table[(n1, n2)]


def p_text(p):
    return "n/a" if p != p else f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


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


def optuna_tpe(objective, seed, trials, **options):
    """Optuna's TPE in one process (study.optimize): as shipped, or with `options`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fn, space = OBJECTIVES[objective]
    from dbdict_fs.searches import split_space

    _, dists = split_space(space)

    def objective_fn(trial):
        p = {k: trial.suggest_float(k, d["low"], d["high"], log=d["type"] == "loguniform") for k, d in dists.items()}
        return fn(p)

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, **options))
    t0 = time.monotonic()
    study.optimize(objective_fn, n_trials=trials)
    return study.best_value, time.monotonic() - t0


def simulated_search(objective, sampler, seed, trials, workers):
    """dbdict's sampler in one process (searches.sample, what a worker calls, given the trials
    as read_trials gives them) with `workers` simulated workers: a trial takes 0.5-1.5 time
    units, a worker asks as soon as its trial ends, so each ask sees about workers - 1
    running trials. Returns the best value."""
    import heapq
    import random

    from dbdict_fs import searches

    fn, space = OBJECTIVES[objective]
    _, dists = searches.split_space(space)
    definition = {"name": "s", "space": dists, "metric": "value", "maximize": False, "sampler": sampler,
                  "seed": seed}
    rng = random.Random(seed * 7919 + 1)
    seen, ends, n = {}, [], 0

    def ask(now):
        nonlocal n
        params = searches.sample(definition, n, [seen[k] for k in sorted(seen)])
        seen[n] = {"n": n, "params": params, "status": "running", "value": None}
        heapq.heappush(ends, (now + rng.uniform(0.5, 1.5), n))
        n += 1

    for _ in range(min(workers, trials)):
        ask(0.0)
    while ends:
        now, k = heapq.heappop(ends)
        seen[k].update(status="done", value=fn(seen[k]["params"]))
        if n < trials:
            ask(now)
    return min(t["value"] for t in seen.values())


def bench_optimum(args, base):
    objectives = args.objectives.split(",")
    if "digits" in objectives:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            print("digits: scikit-learn is not importable here: not measured")
            objectives.remove("digits")
    modes = ("real", "sim") if args.mode == "both" else (args.mode,)
    out = {}
    for mode in modes:
        seeds = args.seeds if mode == "real" else args.sim_seeds
        who = "4 workers" if mode == "real" else "4 simulated workers, 1 process"
        print(f"\n## best value after {args.trials} trials, median [IQR] over {seeds} seeds (lower is better); "
              f"dbdict: {'4 real `dbdict work` processes on one tree' if mode == 'real' else 'in one process'}\n")
        print(f"| objective | dbdict tpe, {who} | Optuna TPE as shipped, 1 process | Optuna TPE, 5 startup, "
              f"1 process | random, {who} | p: dbdict vs Optuna | p: dbdict vs Optuna 5 startup "
              f"| p: dbdict vs random | p: Optuna vs random |" + (" dbdict tpe wall s |" if mode == "real" else ""))
        print("|---|---|---|---|---|---|---|---|---|" + ("---|" if mode == "real" else ""))
        for objective in (objectives if mode == "real" else args.sim_objectives.split(",")):
            res = {"tpe": [], "optuna": [], "optuna5": [], "random": [], "tpe_s": []}
            for seed in range(seeds):
                if mode == "real":
                    best, secs = dbdict_search(objective, "tpe", seed, args.trials, 4, base)
                    res["tpe"].append(best)
                    res["tpe_s"].append(secs)
                    res["random"].append(dbdict_search(objective, "random", seed, args.trials, 4, base)[0])
                else:
                    res["tpe"].append(simulated_search(objective, "tpe", seed, args.trials, 4))
                    res["random"].append(simulated_search(objective, "random", seed, args.trials, 4))
                res["optuna"].append(optuna_tpe(objective, seed, args.trials)[0])
                res["optuna5"].append(optuna_tpe(objective, seed, args.trials, n_startup_trials=5)[0])
            out[(mode, objective)] = res
            ps = [mann_whitney_p(res["tpe"], res[k]) for k in ("optuna", "optuna5", "random")]
            ps.append(mann_whitney_p(res["optuna"], res["random"]))  # what these seeds can tell apart
            print(f"| {objective} | {summary(res['tpe'])} | {summary(res['optuna'])} | {summary(res['optuna5'])} "
                  f"| {summary(res['random'])} | " + " | ".join(p_text(p) for p in ps) + " |"
                  + (f" {statistics.median(res['tpe_s']):.0f} |" if mode == "real" else ""), flush=True)
        if args.raw:
            print("\nper seed:", json.dumps({f"{m}/{o}": {k: [round(v, 5) for v in vs] for k, vs in r.items()}
                                              for (m, o), r in out.items() if m == mode}))
    return out


def simulated_prune(name, rule, seed, trials, steps, workers, cache):
    """The prune bench in one process: the same random points, the Pruner a worker uses (on a
    temporary rungs directory), `workers` simulated workers taking steps of about one time
    unit and 10 to start a trial. Returns (steps run, best final value, pruned trials)."""
    import heapq
    import random

    from dbdict_fs import searches

    _, metric, space, curve_of = CURVES[name]
    _, dists = searches.split_space(space)
    definition = {"name": "s", "space": dists, "metric": metric, "maximize": False, "sampler": "random",
                  "seed": seed, "prune": rule}
    curves = []
    for n in range(trials):
        if (name, seed, n) not in cache:
            cache[(name, seed, n)] = curve_of(searches.sample(definition, n, []), steps)
        curves.append(cache[(name, seed, n)])
    rng = random.Random(seed)
    sdir = tempfile.mkdtemp(prefix="dbdict-bench-rungs-")
    try:
        events, pruners, n_next = [], {}, 0
        for w in range(min(workers, trials)):
            heapq.heappush(events, (rng.uniform(0, 1), n_next, 0))
            n_next += 1
        run, finals, pruned = 0, [], 0
        while events:
            now, n, step = heapq.heappop(events)
            if n not in pruners:
                pruners[n] = searches.Pruner(sdir, definition, n) if rule != "none" else None
            run += 1
            stop = pruners[n] is not None and pruners[n].decide(step, curves[n][step])
            pruned += stop
            if not stop and step + 1 == steps:
                finals.append(curves[n][-1])
            if stop or step + 1 == steps:
                if n_next < trials:
                    heapq.heappush(events, (now + rng.uniform(5, 15), n_next, 0))
                    n_next += 1
            else:
                heapq.heappush(events, (now + rng.uniform(0.8, 1.2), n, step + 1))
        return run, min(finals), pruned
    finally:
        shutil.rmtree(sdir, ignore_errors=True)


def real_prune(name, rule, seed, trials, steps, workers, base):
    """The prune bench with `workers` real `dbdict work` processes. Returns (steps run, best
    final value, pruned trials)."""
    from dbdict_fs import history, searches
    from dbdict_fs.index import build_index

    _, metric, space, _ = CURVES[name]
    tree = os.path.join(base, f"{name}-{rule}-{seed}")
    searches.search(tree, experiment=f"{HERE}:{name}", space=dict(space, steps=steps, step_time=0.02),
                    metric=metric, trials=trials, seed=seed, prune=rule, name="s")
    run_workers(tree, workers)
    rows = build_index(tree).sql(f'select "dbdict.path" as p, "dbdict.status" as s, {metric} as v from jobs')
    assert len(rows) == trials and all(r["s"] in ("done", "pruned") for r in rows), rows
    return (sum(len(history(r["p"])) for r in rows), min(r["v"] for r in rows if r["s"] == "done"),
            sum(r["s"] == "pruned" for r in rows))


def bench_prune(args, base):
    modes = ("real", "sim") if args.mode == "both" else (args.mode,)
    steps = 27
    out = {}
    for mode in modes:
        seeds = args.seeds if mode == "real" else args.sim_seeds
        for name in args.curves.split(","):
            if name == "sgd":
                try:
                    import sklearn  # noqa: F401
                except ImportError:
                    print("sgd: scikit-learn is not importable here: not measured")
                    continue
            how = ("2 real workers, 20 ms steps" if mode == "real" else "2 simulated workers, 1 process")
            print(f"\n## early stopping on `{name}`: {args.prune_trials} trials x {steps} steps, random sampler, "
                  f"{how}, median [IQR] over {seeds} seeds\n")
            print("| prune | steps run | saved vs none (of medians) | best final value | seeds keeping the "
                  "unpruned best | p: best vs none | pruned trials |")
            print("|---|---|---|---|---|---|---|")
            results, cache = {}, {}
            for rule in args.rules.split(","):
                rows = []
                for seed in range(seeds):
                    if mode == "real":
                        rows.append(real_prune(name, rule, seed, args.prune_trials, steps, 2, base))
                    else:
                        rows.append(simulated_prune(name, rule, seed, args.prune_trials, steps, 2, cache))
                results[rule] = rows
            out[(mode, name)] = results
            none = results.get("none")
            for rule, rows in results.items():
                run, best, pruned = ([r[i] for r in rows] for i in range(3))
                saved = 1 - statistics.median(run) / statistics.median([r[0] for r in none]) if none else float("nan")
                kept = f"{sum(b <= r[1] for b, r in zip(best, none))}/{seeds}" if none else "n/a"
                p = mann_whitney_p(best, [r[1] for r in none]) if none and rule != "none" else float("nan")
                print(f"| {rule} | {summary(run, '{:.0f}')} | {saved:.0%} | {summary(best)} | {kept} | {p_text(p)} "
                      f"| {summary(pruned, '{:.0f}')} |", flush=True)
            if args.raw:
                print("\nper seed (steps, best, pruned):", json.dumps({r: v for r, v in results.items()}))
    return out


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
    ap.add_argument("--curves", default="curve,sgd", help="the prune bench's learning curves")
    ap.add_argument("--mode", choices=("real", "sim", "both"), default="both",
                    help="optimum and prune: real `dbdict work` processes (the headline), one process "
                         "with simulated workers (more seeds), or both (default)")
    ap.add_argument("--sim-seeds", type=int, default=30, help="seeds of --mode sim")
    ap.add_argument("--sim-objectives", default="branin,hartmann6", help="the optimum bench's objectives in sim mode")
    ap.add_argument("--raw", action="store_true", help="also print every seed's numbers")
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
