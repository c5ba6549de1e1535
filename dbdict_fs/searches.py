"""Searches: a generator whose next item depends on the results so far (DESIGN.md 11).

Kept in the tree, beside the jobs it makes:

    TREE/.dbdict/searches/NAME/
      search.json          the definition (experiment, fixed keys, space, metric, sampler, ...),
                           written once: the whole directory is built as a dot directory and
                           renamed into place, so a search either exists complete or not at all
      budget.<M>           one empty file per budget given; the budget is the largest M (a raise
                           only adds a file, so two raises never undo each other)
      numbers/<n>/claim.<E>  who took trial number n: booking's own claim (link() of a token)
      numbers/done.<n>     a hint: trial n's job exists (saves a stat per number)
      rungs/<step>/<n>~<value>  what trial n reported at `step`, for --prune (one listing decides)
    TREE/NAME/<n:05d>/     trial n: an ordinary job whose first state says search: NAME, trial: n

Why every number 0..N-1 gets exactly one job, whatever the workers do:

* at most one: the job of trial n has one path, and it is placed by rename() of a complete dot
  directory, which fails when the path holds a job (create.py). Two makers of trial n can
  never both succeed, so no trial is committed twice even if every claim below were broken;
* one maker at a time: n is taken by link()ing a token to numbers/<n>/claim.<E>, booking's
  primitive (link never replaces: one winner per epoch). The holder checks before its rename
  that it is not fenced (booking.Claim: a newer claim, or a heartbeat older than L/2), so a
  taker paused past its lease abandons n to whoever took it after;
* at least one: a number whose claim exists but whose job does not is judged like any
  holder (booking.Observer: unchanged for its lease by observation, or the same-host fast
  path) and taken again with claim.<E+1>; the new taker first looks whether the job exists
  (the old one may have died after its rename) and samples only when it does not. Numbers
  at or above the budget are never taken, and the budget only grows.
No new kind of lock: the claims are judged by the code that judges job claims.
"""

import json
import math
import os
import random
import re
import sys

from . import booking
from . import jobdir as jd
from . import seams
from .errors import DbdictError, Fenced, UsageError

SEARCHES = os.path.join(jd.META_DIR, "searches")
DEFINITION = "search.json"
NUMBERS = "numbers"
RUNGS = "rungs"
BUDGET = "budget."
DONE = "done."
SAMPLERS = ("random", "grid", "tpe", "cmaes", "gp")
OPTUNA_SAMPLERS = ("tpe", "cmaes", "gp")
PRUNERS = ("none", "median", "asha")
NEEDS = {"tpe": ("optuna",), "cmaes": ("optuna", "cmaes"), "gp": ("optuna", "scipy", "torch")}
FINISHED = ("done", "failed", "pruned", "canceled")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_DIST = re.compile(r"^\s*(uniform|loguniform|int|choice)\s*\((.*)\)\s*$", re.S)
TRIAL_DIGITS = 5


# ---------------------------------------------------------------- the space

def parse_dist(text, where=None):
    """A DIST string -> its canonical dict, or None when `text` is not a distribution.

    uniform(a,b) | loguniform(a,b) (0 < a < b) | int(a,b) (inclusive) | choice(v1,...) | {v1,...}
    """
    from .values import _split_top, parse_scalar

    if not isinstance(text, str):
        return None
    stripped = text.strip()
    if stripped.startswith("{") and stripped.endswith("}") and ":" not in stripped:
        kind, body = "choice", stripped[1:-1]
    else:
        m = _DIST.match(stripped)
        if not m:
            return None
        kind, body = m.group(1), m.group(2)
    args = [parse_scalar(t.strip()) for t in _split_top(body)]
    return check_dist({"type": kind, "values": args} if kind == "choice" else
                      {"type": kind, "args": args}, where or text)


def check_dist(dist, where):
    """Validate a distribution given as {"type", "args"|"low"/"high"|"values"}: canonical form."""
    kind = dist.get("type") if isinstance(dist, dict) else None
    if kind == "choice":
        values = dist.get("values")
        if not isinstance(values, list) or not values:
            raise UsageError(f"{where}: choice needs at least one value")
        json.dumps(values, allow_nan=False)
        return {"type": "choice", "values": values}
    if kind not in ("uniform", "loguniform", "int"):
        raise UsageError(f"{where}: not a distribution (uniform(a,b), loguniform(a,b), int(a,b), "
                         f"choice(v1,v2,...) or {{v1,v2,...}})")
    args = dist.get("args", [dist.get("low"), dist.get("high")])
    if len(args) != 2 or any(isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a)
                             for a in args):
        raise UsageError(f"{where}: {kind} needs two finite numbers, {kind}(low,high)")
    low, high = args
    if kind == "int":
        if low != int(low) or high != int(high):
            raise UsageError(f"{where}: int(a,b) needs whole numbers")
        low, high = int(low), int(high)
        if low > high:
            raise UsageError(f"{where}: int(a,b) needs a <= b")
    elif not low < high:
        raise UsageError(f"{where}: {kind}(a,b) needs a < b")
    if kind == "loguniform" and not low > 0:
        raise UsageError(f"{where}: loguniform(a,b) needs 0 < a < b")
    return {"type": kind, "low": low, "high": high}


def split_space(mapping, where="space"):
    """A mapping key -> DIST string, dist dict or fixed value -> (fixed, space), both flat with
    dotted keys. A list is a choice (in a space file or the Python API)."""
    from .values import check_config

    if not isinstance(mapping, dict):
        raise UsageError(f"{where}: a mapping of key: distribution, not a {type(mapping).__name__}")
    fixed, space = {}, {}

    def visit(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if not isinstance(key, str) or not _KEY.match(name):
                raise UsageError(f"{where}: {name!r} is not a key (identifiers, dotted for nesting)")
            if isinstance(value, dict) and "type" in value:
                space[name] = check_dist(value, f"{where}: {name}")
            elif isinstance(value, dict):
                visit(value, name + ".")
            elif isinstance(value, list):
                space[name] = check_dist({"type": "choice", "values": value}, f"{where}: {name}")
            elif isinstance(value, str) and parse_dist(value, f"{where}: {name}") is not None:
                space[name] = parse_dist(value, f"{where}: {name}")
            else:
                fixed[name] = value
    visit(mapping, "")
    check_config(nest(fixed), where=where)
    return fixed, space


def parse_assignments(items):
    """`key=VALUE` / `key=DIST` command-line arguments -> (fixed, space)."""
    from .values import parse_scalar, split_assignment

    fixed, space = {}, {}
    for item in items:
        key, text = split_assignment(item)
        if key in fixed or key in space:
            raise UsageError(f"{item!r}: {key} is given twice")
        dist = parse_dist(text, where=item)
        if dist is not None:
            space[key] = dist
        else:
            fixed[key] = parse_scalar(text)
    return fixed, space


def nest(flat):
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    from .values import _set_dotted

    out = {}
    for key in sorted(flat):
        _set_dotted(out, key, flat[key])
    return out


def get_dotted(mapping, key):
    node = mapping
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def grid_points(space):
    """Every point of a finite space, in a fixed order (sorted keys, values as given)."""
    axes = []
    for key in sorted(space):
        dist = space[key]
        if dist["type"] == "choice":
            axes.append((key, dist["values"]))
        elif dist["type"] == "int":
            axes.append((key, list(range(dist["low"], dist["high"] + 1))))
        else:
            raise UsageError(f"--sampler grid needs a finite space: {key} is {dist['type']}(...) "
                             f"(use int(a,b) or choice(...))")
    points = [{}]
    for key, values in axes:
        points = [dict(p, **{key: v}) for p in points for v in values]
    return points


def inside(space, params):
    """Whether `params` (flat, dotted keys) is a point of `space` (tests and the bench)."""
    for key, dist in space.items():
        v = params.get(key)
        if dist["type"] == "choice":
            if v not in dist["values"]:
                return False
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not dist["low"] <= v <= dist["high"]:
            return False
        elif dist["type"] == "int" and not isinstance(v, int):
            return False
    return True


# ---------------------------------------------------------------- the definition

def search_dir(tree, name):
    return os.path.join(os.fspath(tree), SEARCHES, name)


def _check_name(name):
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise UsageError(f"--name {name!r}: letters, digits, '_', '.', '-' (not starting with '.' or '-')")


def _check_trials(trials):
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise UsageError(f"--trials must be a whole number >= 1, not {trials!r}")


def read_definition(tree, name):
    path = os.path.join(search_dir(tree, name), DEFINITION)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{os.fspath(tree)}: no search named {name!r}") from None
    except (OSError, ValueError) as exc:
        raise DbdictError(f"{path}: cannot read the search: {exc}") from None


def budget(tree, name, names=None):
    """The search's budget: the largest M of its budget.<M> files (one listing)."""
    if names is None:
        names = os.listdir(search_dir(tree, name))
    found = [int(n[len(BUDGET):]) for n in names if n.startswith(BUDGET) and n[len(BUDGET):].isdigit()]
    return max(found, default=0)


def list_searches(tree):
    try:
        names = os.listdir(os.path.join(os.fspath(tree), SEARCHES))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if not n.startswith("."))


def define(tree, *, experiment, space, metric, trials, fixed=None, maximize=False, sampler="random",
           seed=0, prune="none", name=None, cwd=None):
    """Write a new search into the tree (everything is checked first; nothing is written on
    an error). Returns its name."""
    from .create import mark_tree
    from .experiment import resolve_experiment
    from .values import check_config

    _check_trials(trials)
    if sampler not in SAMPLERS:
        raise UsageError(f"--sampler {sampler!r}: one of {', '.join(SAMPLERS)}")
    if prune not in PRUNERS:
        raise UsageError(f"--prune {prune!r}: one of {', '.join(PRUNERS)}")
    if not isinstance(metric, str) or not _KEY.match(metric):
        raise UsageError(f"--metric {metric!r}: the name of a result the experiment writes (e.g. valid_err)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"--seed must be a whole number, not {seed!r}")
    fixed = dict(fixed or {})
    space = dict(space or {})
    if not space:
        raise UsageError("a search needs at least one key=DIST (e.g. lr='loguniform(1e-4,1)') or --space FILE")
    both = set(fixed) & set(space)
    if both:
        raise UsageError(f"{sorted(both)[0]} is both a fixed key and a searched one")
    for key in list(fixed) + list(space):
        if not _KEY.match(key):
            raise UsageError(f"{key!r} is not a key (identifiers, dotted for nesting)")
        for other in list(fixed) + list(space):
            if other.startswith(key + "."):
                raise UsageError(f"{key} and {other} conflict: {key} cannot be both a value and a mapping")
    if metric in space or metric in fixed:
        raise UsageError(f"--metric {metric} is one of the config's keys, not a result")
    check_config(nest(fixed), where="the fixed keys")
    if sampler == "grid":
        size = len(grid_points(space))
        if trials > size:
            raise UsageError(f"--trials {trials}: the grid has only {size} points")
    if sampler in OPTUNA_SAMPLERS:
        import importlib.util

        for module in NEEDS[sampler]:  # looked up, not imported: defining a search stays cheap
            if importlib.util.find_spec(module) is None:
                raise UsageError(f"--sampler {sampler} needs {module}: pip install 'dbdict_fs[search]'"
                                 + ("" if module in ("optuna", "cmaes") else f" {module}"))
    if name is None:
        name = f"search-{jd.unique_suffix()[-6:]}"
    _check_name(name)
    tree = os.fspath(tree)
    if os.path.isfile(jd.JobPaths(tree).config):
        raise UsageError(f"{tree}: is a job directory, not a tree")
    experiment, pythonpath = resolve_experiment(experiment, cwd)
    definition = {"name": name, "experiment": experiment, "pythonpath": pythonpath, "fixed": fixed,
                  "space": space, "metric": metric, "maximize": bool(maximize), "sampler": sampler,
                  "seed": seed, "prune": prune, "created": booking.utc_iso()}
    target = search_dir(tree, name)
    if os.path.exists(target):
        raise UsageError(f"{tree}: a search named {name!r} exists (raise its budget with "
                         f"`dbdict search {tree} --name {name} --trials M`)")
    mark_tree(tree)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = os.path.join(os.path.dirname(target), f"{jd.TMP_PREFIX}{name}.{jd.unique_suffix()}")
    try:
        os.mkdir(tmp)
        os.mkdir(os.path.join(tmp, NUMBERS))
        jd.atomic_write(os.path.join(tmp, DEFINITION),
                        (json.dumps(definition, indent=2, ensure_ascii=False) + "\n").encode(), fsync=True)
        open(os.path.join(tmp, f"{BUDGET}{trials}"), "wb").close()
        jd.fsync_dir(tmp)
        try:
            os.rename(tmp, target)  # never onto an existing search: it is not empty
        except OSError as exc:
            if os.path.exists(os.path.join(target, DEFINITION)):
                raise UsageError(f"{tree}: a search named {name!r} exists") from None
            raise DbdictError(f"cannot create the search {target}: {exc.strerror or exc}") from None
        jd.fsync_dir(os.path.dirname(target))
    except OSError as exc:
        raise DbdictError(f"cannot create the search {target}: {exc.strerror or exc}") from None
    finally:
        if os.path.isdir(tmp):
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return name


def raise_budget(tree, name, trials):
    """Raise a search's budget to `trials` (never lowers it). Returns the new budget."""
    _check_trials(trials)
    _check_name(name)
    definition = read_definition(tree, name)
    now = budget(tree, name)
    if trials < now:
        raise UsageError(f"search {name}: the budget is {now}; it can only be raised")
    if definition["sampler"] == "grid":
        size = len(grid_points(definition["space"]))
        if trials > size:
            raise UsageError(f"--trials {trials}: the grid has only {size} points")
    path = os.path.join(search_dir(tree, name), f"{BUDGET}{trials}")
    try:
        open(path, "ab").close()
        jd.fsync_dir(os.path.dirname(path))
    except OSError as exc:
        raise DbdictError(f"{path}: {exc.strerror or exc}") from None
    return max(now, trials)


def search(tree, experiment=None, space=None, metric=None, trials=None, *, fixed=None, maximize=False,
           sampler="random", seed=0, prune="none", name=None):
    """Start a search in `tree` (Python API of `dbdict search`), or raise the budget of the
    search `name` when only `name` and `trials` are given. Returns the search's name.

    `space` maps keys to distributions: "uniform(a,b)", "loguniform(a,b)", "int(a,b)",
    "choice(a,b)" or "{a,b}", a list (a choice), or a plain value (a fixed key). Workers
    (`dbdict work`, `dbdict_fs.work`) then take and run the trials.
    """
    if experiment is None and space is None and metric is None and name is not None:
        raise_budget(tree, name, trials)
        return name
    if experiment is None or metric is None or trials is None:
        raise UsageError("search needs experiment=, space=, metric= and trials= (or name= and trials= "
                         "to raise a budget)")
    more_fixed, dists = split_space(space if space is not None else {})
    return define(tree, experiment=experiment, space=dists, metric=metric, trials=trials,
                  fixed=dict(fixed or {}, **more_fixed), maximize=maximize, sampler=sampler, seed=seed,
                  prune=prune, name=name)


# ---------------------------------------------------------------- trials and the sampler

def trials_dir(tree, name):
    return os.path.join(os.fspath(tree), name)


def trial_path(tree, name, n):
    return os.path.join(trials_dir(tree, name), f"{n:0{TRIAL_DIGITS}d}")


def read_trials(tree, definition):
    """Every trial's (n, params, status, value): one listing and one state read per trial.
    This is what stays O(trials): the sampler must see every result."""
    base = trials_dir(tree, definition["name"])
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    out = []
    for entry in sorted(names):
        if not entry.isdigit():
            continue
        try:
            _, state = jd.read_latest_state(os.path.join(base, entry))
        except (DbdictError, OSError):
            continue
        book = state["dbdict"]
        if book.get("search") != definition["name"] or not isinstance(book.get("trial"), int):
            continue
        params = {k: get_dotted(state, k) for k in definition["space"]}
        value = get_dotted(state, definition["metric"])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            value = None
        out.append({"n": book["trial"], "params": params, "status": book["status"], "value": value,
                    "pruned_at_step": book.get("pruned_at_step"), "path": os.path.join(base, entry)})
    out.sort(key=lambda t: t["n"])
    return out


def _trial_seed(definition, n):
    return (int(definition.get("seed") or 0) * 1_000_003 + n) % (2 ** 31)


def sample(definition, n, trials):
    """The params of trial `n` (flat, dotted keys): a pure function of the definition, `n`
    and `trials` (finished and running), so the same seed and history give the same point."""
    space = definition["space"]
    kind = definition["sampler"]
    if kind == "grid":
        points = grid_points(space)
        order = list(range(len(points)))
        if definition.get("seed"):
            random.Random(definition["seed"]).shuffle(order)
        return points[order[n % len(points)]]
    if kind == "random":
        return _random_point(space, random.Random(_trial_seed(definition, n)))
    return _optuna_point(definition, n, trials)


def _random_point(space, rng):
    out = {}
    for key in sorted(space):
        d = space[key]
        if d["type"] == "choice":
            out[key] = d["values"][rng.randrange(len(d["values"]))]
        elif d["type"] == "int":
            out[key] = rng.randint(d["low"], d["high"])
        elif d["type"] == "uniform":
            out[key] = rng.uniform(d["low"], d["high"])
        else:
            out[key] = math.exp(rng.uniform(math.log(d["low"]), math.log(d["high"])))
    return out


def _optuna_import():
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _distributions(optuna, space):
    dists = {}
    for key, d in space.items():
        if d["type"] == "choice":  # by index: any JSON value may be a choice
            dists[key] = optuna.distributions.CategoricalDistribution(list(range(len(d["values"]))))
        elif d["type"] == "int":
            dists[key] = optuna.distributions.IntDistribution(d["low"], d["high"])
        else:
            dists[key] = optuna.distributions.FloatDistribution(d["low"], d["high"],
                                                                log=d["type"] == "loguniform")
    return dists


def _to_optuna(space, params):
    out = {}
    for key, d in space.items():
        v = params.get(key)
        if d["type"] == "choice":
            if v not in d["values"]:
                return None
            v = d["values"].index(v)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not d["low"] <= v <= d["high"]:
            return None
        out[key] = v
    return out


# TPE as dbdict runs it (DESIGN.md 11.1): multivariate (one joint Parzen estimator, Optuna's
# own default for one objective, said explicitly so a change of default cannot change a
# search), the first TPE_STARTUP trial *numbers* random, and running trials handed to Optuna
# as RUNNING, which its constant liar puts among the bad ones without counting them as results.
TPE_STARTUP = 5


def make_sampler(optuna, kind, seed, n=0):
    """The sampler that asks for trial `n`, seeded with (seed, n)."""
    if kind == "tpe":
        # Trials 0..TPE_STARTUP-1 are random whatever has finished: the startup counts the
        # numbers taken (running trials included), so 4 workers make as many random trials as
        # one process does, not TPE_STARTUP finished ones plus the 3 running meanwhile. After
        # it, TPE needs one finished trial (until then it is random too).
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=1 if n >= TPE_STARTUP else 2 ** 31)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.GPSampler(seed=seed)


def _optuna_point(definition, n, trials):
    """Ask-and-tell with an in-memory study rebuilt from the tree, trials added in number
    order: finished ones as they ended (failed and pruned count as tried), running ones as
    RUNNING, so parallel workers do not all ask for the same point (TPE's constant liar
    counts them among the worst; cmaes and gp skip them, with the worst value so far for
    them instead: the plain constant liar)."""
    optuna = _optuna_import()
    space = definition["space"]
    dists = _distributions(optuna, space)
    maximize = definition["maximize"]
    kind = definition["sampler"]
    study = optuna.create_study(direction="maximize" if maximize else "minimize",
                                sampler=make_sampler(optuna, kind, _trial_seed(definition, n), n))
    TS = optuna.trial.TrialState
    values = [t["value"] for t in trials if t["status"] == "done" and t["value"] is not None]
    liar = (min(values) if maximize else max(values)) if values else None
    for t in trials:
        params = _to_optuna(space, t["params"])
        if params is None or t["n"] == n:
            continue
        if t["status"] == "done" and t["value"] is not None:
            frozen = optuna.trial.create_trial(params=params, distributions=dists, value=t["value"])
        elif t["status"] == "pruned":
            step = t.get("pruned_at_step")
            inter = {step if isinstance(step, int) else 0: t["value"]} if t["value"] is not None else {}
            frozen = optuna.trial.create_trial(params=params, distributions=dists, state=TS.PRUNED,
                                               intermediate_values=inter)
        elif t["status"] in FINISHED:
            frozen = optuna.trial.create_trial(params=params, distributions=dists, state=TS.FAIL)
        elif kind == "tpe":
            frozen = optuna.trial.create_trial(params=params, distributions=dists, state=TS.RUNNING)
        elif liar is not None:
            frozen = optuna.trial.create_trial(params=params, distributions=dists, value=liar)
        else:
            continue
        study.add_trial(frozen)
    trial = study.ask(fixed_distributions=dists)
    out = {}
    for key, d in space.items():
        v = trial.params[key]
        out[key] = d["values"][v] if d["type"] == "choice" else (int(v) if d["type"] == "int" else float(v))
    return out


# ---------------------------------------------------------------- taking a trial number

def _test_stop(point):
    """Test seam: DBDICT_TEST_SEARCH_STOP=<point>:<marker> makes this process write <marker>
    (its pid) and SIGSTOP itself at <point> (`took`: a number won, its job not yet written;
    `written`: its job renamed into place, no live marker or hint yet), once per marker. A taker paused, or killed, exactly there."""
    for where, marker in seams.SEARCH_STOP:
        if where == point:
            seams.stop_here(marker)


def _stale(observer, ndir, epoch):
    """Whether claim.<epoch> of a trial number may be taken over: booking decides, as for jobs.
    (Test seam DBDICT_TEST_BREAK_TRIAL_CLAIM: every holder looks dead, to see tests catch it.)"""
    if seams.BREAK_TRIAL_CLAIM:
        return True
    return observer.is_stale(ndir, epoch)


class Taker:
    """One process's side of a search: takes trial numbers and writes trial jobs."""

    def __init__(self, tree, identity, observer, lease, heartbeat):
        self.tree = os.fspath(tree)
        self.identity, self.observer = identity, observer
        self.lease, self.heartbeat = lease, heartbeat

    def next_trial(self):
        """Take a trial number of some search with budget left and write its job.
        Returns (path of the new trial job or None, whether numbers are held elsewhere)."""
        pending = False
        names = list_searches(self.tree)
        random.shuffle(names)  # workers spread over searches
        for name in names:
            try:
                path, held = self._one(name)
            except (DbdictError, OSError) as exc:
                if isinstance(exc, Fenced):
                    continue
                raise
            pending = pending or held
            if path is not None:
                return path, True
        return None, pending

    def _one(self, name):
        sdir = search_dir(self.tree, name)
        ndir = os.path.join(sdir, NUMBERS)
        try:
            limit = budget(self.tree, name)
            entries = os.listdir(ndir)
        except FileNotFoundError:
            return None, False
        taken, done = set(), set()
        for e in entries:
            if e.isdigit():
                taken.add(int(e))
            elif e.startswith(DONE) and e[len(DONE):].isdigit():
                done.add(int(e[len(DONE):]))
        definition = None
        for n in range(limit):  # a free number: link claim.1
            if n in taken:
                continue
            definition = definition or read_definition(self.tree, name)
            path = self._take(definition, n, 0)
            if path is not None:
                return path, True
        held = False
        for n in sorted(taken - done):  # taken, no job seen: is its taker gone?
            if n >= limit:
                continue
            nd = os.path.join(ndir, str(n))
            top = jd.list_job(nd).claim_epoch
            if top and not _stale(self.observer, nd, top):
                held = True
                continue
            definition = definition or read_definition(self.tree, name)
            path = self._take(definition, n, top)
            if path is not None:
                return path, True
            held = held or not os.path.exists(os.path.join(ndir, f"{DONE}{n}"))
        return None, held

    def _take(self, definition, n, top):
        """Link numbers/<n>/claim.<top+1>; when won, write trial n's job. Its path, or None."""
        name = definition["name"]
        ndir = os.path.join(search_dir(self.tree, name), NUMBERS, str(n))
        if definition["sampler"] in OPTUNA_SAMPLERS:
            _optuna_import()  # before the claim: an import must not eat the lease
        os.makedirs(ndir, exist_ok=True)
        token = booking.make_token(self.identity, self.lease, self.heartbeat, "trial")
        linked_at = booking.boottime()
        if not booking.link_claim(ndir, top + 1, token):
            return None
        held = booking.Claim(ndir, top + 1, token, None, linked_at)
        self.observer.forget(ndir)
        _test_stop("took")
        target = trial_path(self.tree, name, n)
        if not os.path.exists(os.path.join(target, jd.CONFIG)):
            history = read_trials(self.tree, definition) if definition["sampler"] in OPTUNA_SAMPLERS else []
            params = sample(definition, n, history)
            if not held.keep_alive():
                raise Fenced(f"{ndir}: trial {n} not written: {held.fenced()}")
            if not self._write(definition, n, params, held):
                return None
        _test_stop("written")
        # Live markers again once the job exists: a taker that died after writing it (this
        # one took its number over) may have died between its markers and the rename, and
        # a walk may have marked TREE/NAME final meanwhile: the job must not stay hidden.
        from .discovery import mark_dirs_live

        mark_dirs_live(os.path.dirname(target), self.tree)
        _mark_done(ndir, n)
        return target

    def _write(self, definition, n, params, held):
        from .create import DEFAULT_PRIORITY, _write_job
        from .discovery import creating_in
        from .values import check_config, config_hash, merge

        config = check_config(merge(nest(definition["fixed"]), nest(params)), where=f"trial {n}")
        experiment = definition["experiment"]
        rel = os.path.join(definition["name"], f"{n:0{TRIAL_DIGITS}d}")

        def still_ours():  # the last moment before the rename: a paused taker stops here
            if not held.check():
                raise Fenced(f"{held.jobdir}: trial {n} not written: {held.fenced()}")

        creating = []

        def before_placing(directory):  # markers before the job, as `create` makes them (issue 23.3)
            creating.append(creating_in(directory, self.tree, "t" + jd.unique_suffix().replace(".", "")))

        try:
            placed = _write_job(self.tree, rel, config, experiment, definition.get("pythonpath") or [],
                                config_hash(config, experiment), DEFAULT_PRIORITY,
                                extra_book={"search": definition["name"], "trial": n, "trial_claim": held.epoch},
                                before_rename=still_ours, before_placing=before_placing)
        finally:
            for marker in creating:  # the directory's own marker goes; the ones above stay
                try:
                    os.unlink(marker)
                except OSError:
                    pass
        return placed or os.path.exists(os.path.join(self.tree, rel, jd.CONFIG))


def _mark_done(ndir, n):
    try:
        open(os.path.join(os.path.dirname(ndir), f"{DONE}{n}"), "ab").close()
    except OSError:
        pass  # a hint only: the next taker stats the job instead


def serve(loop):
    """The worker's hook (runner.work): when nothing is runnable, take a trial number of a
    search with budget left, write its job and run it. Returns (whether a trial was taken,
    whether numbers are held by takers elsewhere: a --wait worker keeps watching them)."""
    taker = getattr(loop, "search_taker", None)
    if taker is None:
        if not list_searches(loop.tree):
            return False, False
        taker = loop.search_taker = Taker(loop.tree, loop.identity, loop.observer, loop.opts.lease,
                                          loop.opts.heartbeat)
    path, pending = taker.next_trial()
    if path is None:
        return False, pending
    loop.ran_one(loop._try(path, None))  # None: another worker booked it first
    return True, True


# ---------------------------------------------------------------- early stopping

ASHA_ETA = 3  # ASHA's reduction factor: the top 1/eta of a rung go on
ASHA_MIN_RESOURCE = 3  # steps a trial runs before its first rung: rungs at steps 3 * eta**k - 1 (2, 8, 26, ...)
ASHA_MIN_VALUES = 3  # values at a rung (the trial's own included) before anyone is pruned there
MEDIAN_STARTUP = 5  # values of other trials a step needs before the median rule prunes


def pruner_for(held):
    """The Pruner of a trial whose search asks for early stopping, else None. Costs one read
    (the definition) per attempt; None for a trial requeued after it was pruned, which then
    runs to the end (`requeue --status pruned`)."""
    book = (held.state or {}).get("dbdict") or {}
    name, n = book.get("search"), book.get("trial")
    if not isinstance(name, str) or not isinstance(n, int) or book.get("pruned_at_step") is not None:
        return None
    # A trial is TREE/NAME/<n>: its search lives in TREE/.dbdict/searches/NAME.
    sdir = os.path.join(os.path.dirname(os.path.dirname(os.path.normpath(held.jobdir))), SEARCHES, name)
    try:
        with open(os.path.join(sdir, DEFINITION), encoding="utf-8") as f:
            definition = json.load(f)
    except (OSError, ValueError):
        return None
    if definition.get("prune") not in ("median", "asha") or definition.get("name") != name:
        return None
    return Pruner(sdir, definition, n)


class Pruner:
    """Decides from what a trial logs whether it should stop (DESIGN.md 11, 11.1).

    Each reported value of the metric at a decision step is an empty file
    `rungs/<step>/<n>~<value>`; a decision is that create plus one listing of the step's
    directory (the values every trial reported there) and, for asha, one stat: O(1)
    operations, never a read of another trial's history. A trial that reports twice at a
    step (a resumed one) counts once, with its best value there.

    median (Optuna's MedianPruner): every step decides; prune when the trial's best value so
    far is worse than the median of the other trials' values at this step, once
    MEDIAN_STARTUP others reported it.
    asha (Optuna's SuccessiveHalvingPruner with min_resource 3, reduction factor 3 and a
    bootstrap of 3, and one rule of ours): rung k is at step 3 * 3**k - 1 (steps 2, 8, 26,
    ...); a trial reaches it at its first reported step at or past it (steps may be logged
    sparsely; one report may pass several rungs) with the value of that step. There it goes
    on when in the top third of the values reported at the rung; never pruned while fewer
    than ASHA_MIN_VALUES values are there, nor while no trial has reached the next rung
    (nobody has gone past this one, so a rung at a search's last step never prunes: that
    would save nothing and only hide a finished trial's result).
    """

    def __init__(self, sdir, definition, n):
        self.sdir, self.n = sdir, n
        self.metric, self.rule = definition["metric"], definition["prune"]
        self.sign = -1.0 if definition.get("maximize") else 1.0  # decide as if minimising
        self.best = None
        self.rung = 0  # asha: the next rung this trial has to pass

    def observe(self, points):
        """The step at which the trial should be pruned, or None to go on."""
        for point in points if isinstance(points, list) else ():
            step, value = point.get("step"), point.get(self.metric)
            if (isinstance(step, bool) or not isinstance(step, int) or step < 0 or isinstance(value, bool)
                    or not isinstance(value, (int, float)) or not math.isfinite(value)):
                continue
            if self.decide(step, self.sign * float(value)):
                return step
        return None

    def decide(self, step, value):
        """Whether to prune after the trial reported `value` (minimised) at `step`."""
        self.best = value if self.best is None else min(self.best, value)
        if self.rule == "median":
            others = self._report(step, value)
            if others is None or len(others) < MEDIAN_STARTUP:
                return False
            ordered = sorted(others.values())
            mid = len(ordered) // 2
            median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
            return self.best > median
        while step >= asha_rung_step(self.rung):
            rung_step = asha_rung_step(self.rung)
            self.rung += 1
            others = self._report(rung_step, value)
            if others is None:
                return False
            mine = min(value, others.pop(self.n, value))  # reported here before a resume: its best
            competing = sorted(list(others.values()) + [mine])
            if len(competing) < ASHA_MIN_VALUES:
                continue
            if not os.path.isdir(os.path.join(self.sdir, RUNGS, str(asha_rung_step(self.rung)))):
                continue  # nobody has reached the next rung: nobody has gone past this one
            keep = max(len(competing) // ASHA_ETA - 1, 0)
            if mine > competing[keep]:
                return True
        return False

    def _report(self, step, value):
        """Record our value at `step`; {trial: its best value there} of the trials that
        reported at `step`, ours left out unless reported before (one listing), or None."""
        rdir = os.path.join(self.sdir, RUNGS, str(step))
        mine = f"{self.n}~{self.sign * value!r}"
        try:
            os.makedirs(rdir, exist_ok=True)
            open(os.path.join(rdir, mine), "ab").close()
            names = os.listdir(rdir)
        except OSError:
            return None  # a hint that cannot be written: the trial goes on
        seen = {}
        for name in names:
            if name == mine:
                continue
            who, _, text = name.partition("~")
            try:
                who, v = int(who), self.sign * float(text)
            except ValueError:
                continue
            if math.isfinite(v):
                seen[who] = min(v, seen.get(who, v))
        if self.rule == "median":
            seen.pop(self.n, None)
        return seen


def asha_rung_step(k):
    """The step of ASHA's rung k: a trial has run ASHA_MIN_RESOURCE * eta**k steps there."""
    return ASHA_MIN_RESOURCE * ASHA_ETA ** k - 1


# ---------------------------------------------------------------- status

def summaries(tree, rows):
    """One summary per search, from the index rows status already read: {name, trials
    (budget), done, running, pruned, failed, best: {value, path}}."""
    names = list_searches(tree)
    if not names:
        return []
    by = {n: [] for n in names}
    for r in rows:
        if r.get("dbdict.search") in by:
            by[r["dbdict.search"]].append(r)
    out = []
    for name in names:
        try:
            definition = read_definition(tree, name)
            limit = budget(tree, name)
        except DbdictError:
            continue
        counts = {"done": 0, "running": 0, "pruned": 0, "failed": 0}
        best = None
        for r in by[name]:
            st = r.get("dbdict.status")
            key = "running" if st in ("running", "booked", "stale") else st
            if key in counts:
                counts[key] += 1
            v = r.get(definition["metric"])
            if st == "done" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                if best is None or (v > best[0] if definition["maximize"] else v < best[0]):
                    best = (v, r["dbdict.path"])
        out.append({"name": name, "trials": limit, **counts, "created": len(by[name]),
                    "metric": definition["metric"], "maximize": definition["maximize"],
                    "sampler": definition["sampler"],
                    "best": {"value": best[0], "path": best[1]} if best else None})
    return out


def print_summaries(searches):
    if not searches:
        return
    print("\nsearches:")
    for s in searches:
        best = "none yet" if not s["best"] else f"{s['best']['value']:g} ({s['best']['path']})"
        sense = "max" if s["maximize"] else "min"
        print(f"  {s['name']}: {s['created']} of {s['trials']} trials ({s['sampler']}): {s['done']} done, "
              f"{s['running']} running, {s['pruned']} pruned, {s['failed']} failed; "
              f"best {sense} {s['metric']} {best}")


# ---------------------------------------------------------------- the command

HELP = """
Start a search: trials sampled from a space, each an ordinary job of the tree, made by the
workers (`dbdict work`) when no other job is runnable, until the budget is used. Prints the
search's name first. key=VALUE keys are fixed; key=DIST keys are searched:
uniform(a,b), loguniform(a,b), int(a,b) (inclusive), choice(v1,v2,...) or {{v1,v2,...}}.
tpe, cmaes and gp need Optuna: pip install 'dbdict_fs[search]'.

examples:
  {prog} search tree -e examples/train.py:main lr='loguniform(1e-4,1)' depth='int(1,4)' \\
        --metric valid_err --trials 50 --sampler tpe --name lr-search
  {prog} work tree --wait                          # on as many hosts as you like
  {prog} search tree --name lr-search --trials 80  # raise the budget
"""


def add_command(add, prog):
    """Register `search` with cli.build_parser's `add`."""
    p = add("search", cmd_search, "start an adaptive search (or raise its budget)", HELP.format(prog=prog))
    if p:
        p.add_argument("tree", metavar="TREE", help="the tree (created if missing)")
        p.add_argument("items", nargs="*", metavar="key=VALUE|key=DIST", help="fixed keys and searched keys")
        p.set_defaults(_rest="items")
        p.add_argument("--experiment", "-e", metavar="MOD:ATTR|FILE.py:ATTR", help="the experiment to run")
        p.add_argument("--space", metavar="FILE.yaml", help="the space (and fixed keys) as a YAML mapping")
        p.add_argument("--metric", metavar="NAME", help="the result to optimise (minimised unless --maximize)")
        p.add_argument("--maximize", action="store_true", help="higher is better")
        p.add_argument("--trials", type=_whole, metavar="N", help="the budget: trials 0..N-1")
        p.add_argument("--sampler", default="random", metavar="S",
                       help="random (default), grid, tpe, cmaes or gp")
        p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
        p.add_argument("--prune", default="none", metavar="P", help="early stopping: none (default), median, asha")
        p.add_argument("--name", metavar="NAME", help="the search's name (default: search-XXXXXX)")


def _whole(text):
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--trials must be a whole number, not {text!r}") from None


def cmd_search(args):
    defining = args.experiment or args.items or args.space or args.metric
    if args.trials is None:
        raise UsageError("search: --trials N is required")
    if not defining:
        if args.name is None:
            raise UsageError("search: give -e EXP, the space and --metric (or --name NAME --trials M)")
        new = raise_budget(args.tree, args.name, args.trials)
        print(args.name)
        print(f"search {args.name}: budget {new}", file=sys.stderr)
        return 0
    if not args.experiment or not args.metric:
        raise UsageError("search: -e EXP and --metric NAME are required")
    fixed, space = parse_assignments(args.items)
    if args.space:
        import yaml

        try:
            with open(args.space, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"--space {args.space}: {getattr(exc, 'strerror', None) or exc}".splitlines()[0]) from None
        more_fixed, more_space = split_space(data if data is not None else {}, where=f"--space {args.space}")
        for key in set(more_fixed) | set(more_space):
            if key in fixed or key in space:
                raise UsageError(f"{key} is given both on the command line and in --space")
        fixed.update(more_fixed)
        space.update(more_space)
    name = define(args.tree, experiment=args.experiment, space=space, metric=args.metric, trials=args.trials,
                  fixed=fixed, maximize=args.maximize, sampler=args.sampler, seed=args.seed, prune=args.prune,
                  name=args.name)
    print(name)
    print(f"search {name}: {args.trials} trials of {len(space)} keys ({args.sampler}); "
          f"run `dbdict work {args.tree}` to start them", file=sys.stderr)
    return 0

