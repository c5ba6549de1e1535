"""What a sweep's rows say, for the report: each key's role, the configurations (jobs that
differ only in a replicate key such as the seed), and how much each parameter matters.

Roles of the user keys of the rows (DESIGN.md 6: dotted keys, typed values):
- constant: one value in every job (shown once in the report's header);
- replicate: named `seed` or `*_seed`, or given with `--over`: averaged over, never a panel;
- id: a different string or integer in every job (5 jobs or more): a label, not a parameter;
- parameter: the other config keys, `num` when every value is a number, else `cat`;
- result: the other keys (written by the experiment), the metric among them.
"""

import math

BOOK = "dbdict."
MIN_ID_JOBS = 5
FANOVA_POINTS = 500  # fANOVA sees an even sample of at most this many configurations


def finite(value):
    """The value as a float when it is a finite number, else None (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def diverged(value):
    """NaN or an infinity: a run that blew up, not a missing value."""
    return isinstance(value, float) and not math.isfinite(value)


def _hashable(value):
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def is_replicate(key, over=()):
    leaf = key.rsplit(".", 1)[-1]
    return key in over or leaf == "seed" or leaf.endswith("_seed")


class Roles:
    """The role of every user key of `rows` (see the module docstring)."""

    def __init__(self, rows, config_keys, metric=None, over=()):
        user = list(dict.fromkeys(k for r in rows for k in r if not k.startswith(BOOK)))
        self.constant, self.replicates, self.ids, self.params, self.results = {}, [], [], [], []
        self.kind = {}
        for key in user:
            values = [r.get(key) for r in rows]
            distinct = {_hashable(v) for v in values}
            if key == metric:
                self.results.append(key)
            elif len(distinct) == 1 and len(rows) > 1:
                self.constant[key] = values[0]
            elif key not in config_keys:
                self.results.append(key)
            elif is_replicate(key, over):
                self.replicates.append(key)
            elif (len(rows) >= MIN_ID_JOBS and len(distinct) == len(rows)
                  and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values)):
                self.ids.append(key)
            else:
                self.params.append(key)
                present = [v for v in values if v is not None]
                numeric = all(finite(v) is not None for v in present)
                self.kind[key] = "num" if numeric and len(set(present)) > 1 else "cat"


def configurations(rows, params):
    """Groups of row indices that share every parameter's value: the jobs of a group differ
    only in replicate keys (or ids), so the group's metric is their mean."""
    groups = {}
    for i, row in enumerate(rows):
        groups.setdefault(tuple(_hashable(row.get(k)) for k in params), []).append(i)
    return list(groups.values())


def summary(rows, group, metric):
    """(mean, lo, hi, finite count, diverged count) of the metric over a group's rows."""
    values = [rows[i].get(metric) for i in group]
    ok = [v for v in map(finite, values) if v is not None]
    bad = sum(1 for v in values if diverged(v))
    if not ok:
        return None, None, None, 0, bad
    return sum(ok) / len(ok), min(ok), max(ok), len(ok), bad


def importance(points, kinds):
    """{param: share} summing to 1: how much of the metric's variance each parameter explains.

    `points` are (values by param, metric) of configurations with a finite metric. Optuna's
    fANOVA when optuna (the `[search]` extra) and scikit-learn are importable (on an even
    sample of FANOVA_POINTS configurations at most); otherwise the first-order
    variance share of each parameter (its correlation ratio: the variance of the metric's
    mean per value, numbers binned by rank into 8 bins, over the metric's variance),
    normalised to sum to 1. The estimate sees main effects only: it does not split
    interactions, and it credits correlated parameters alike. Returns (method, shares)."""
    if len(points) < 3 or not kinds:
        return None, {}
    try:
        return "fANOVA (optuna)", _fanova(points, kinds)
    except Exception:  # noqa: BLE001 - optuna missing or refusing these values: the estimate
        pass
    ys = [y for _, y in points]
    mean = sum(ys) / len(ys)
    total = sum((y - mean) ** 2 for y in ys)
    if total <= 0:
        return None, {}
    shares = {}
    for key, kind in kinds.items():
        values = [_hashable(v[key]) for v, _ in points]
        if kind == "num" and len(set(values)) > 8:
            order = sorted(range(len(values)), key=lambda i: values[i] if values[i] is not None else -math.inf)
            bins = {i: rank * 8 // len(order) for rank, i in enumerate(order)}
            values = [bins[i] for i in range(len(values))]
        cells = {}
        for value, y in zip(values, ys):
            cells.setdefault(value, []).append(y)
        shares[key] = sum(len(c) * (sum(c) / len(c) - mean) ** 2 for c in cells.values()) / total
    norm = sum(shares.values())
    return ("variance share per parameter", {k: v / norm for k, v in shares.items()}) if norm > 0 else (None, {})


def _fanova(points, kinds):
    import optuna

    points = points[::-(-len(points) // FANOVA_POINTS)]  # its forest costs minutes at 10k points
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study on the report's stderr
    dist = optuna.distributions
    space = {}
    for key, kind in kinds.items():
        values = [v[key] for v, _ in points]
        if kind == "num":
            lo, hi = min(values), max(values)
            space[key] = dist.FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 100)
        else:
            space[key] = dist.CategoricalDistribution(sorted(set(values), key=str))
    study = optuna.create_study()
    for values, y in points:
        params = {k: (float(values[k]) if kinds[k] == "num" else values[k]) for k in kinds}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=y))
    shares = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    norm = float(sum(shares.values()))
    if not norm > 0:
        raise ValueError("no variance")
    return {k: float(v) / norm for k, v in shares.items()}
