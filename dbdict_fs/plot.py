"""`dbdict plot`: a metric against a parameter, or learning curves, as PNG or SVG (matplotlib).

matplotlib is the optional extra `dbdict_fs[plot]`, imported only here. The grouping and
averaging (`series_xy`, `series_curves`) are plain Python.
"""

import math
import os
import sys

from .errors import UsageError

INSTALL = "dbdict plot needs matplotlib: pip install 'dbdict_fs[plot]' (or pip install matplotlib)"


def _num(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def _group_key(value):
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


def _label(by, value):
    if by is None:
        return "all jobs"
    return f"{by}={value:g}" if isinstance(value, float) else f"{by}={value}"


def _stats(values):
    return sum(values) / len(values), min(values), max(values)


def series_xy(rows, x, y, by=None, over=None):
    """[(label, [(x, mean, lo, hi), ...]), ...] sorted by x; one series per `by` value.

    With `over`, jobs of a group that differ only in `over` (and share x) are averaged;
    without it every job is a point (lo = hi = its value)."""
    groups = {}
    for row in rows:
        xv, yv = _num(row.get(x)), _num(row.get(y))
        if xv is None or yv is None:
            continue
        groups.setdefault(row.get(by) if by else None, {}).setdefault(xv, []).append(yv)
    out = []
    for key in sorted(groups, key=_group_key):
        points = []
        for xv in sorted(groups[key]):
            ys = groups[key][xv]
            if over:
                points.append((xv, *_stats(ys)))
            else:
                points.extend((xv, v, v, v) for v in sorted(ys))
        out.append((_label(by, key), points))
    return out


def series_curves(rows, history_rows, metric, by=None, limit=None):
    """Learning curves: [(label, [(step, mean, lo, hi), ...]), ...]. With `by`, the jobs of a
    group are averaged step by step; without it each job is its own series (path as label)."""
    paths = {row.get("dbdict.path"): row for row in rows}
    per_job = {}
    for path, step, name, value in history_rows:
        if name == metric and path in paths and _num(step) is not None and _num(value) is not None:
            per_job.setdefault(path, []).append((float(step), float(value)))
    out = []
    if by is None:
        for path in (p for p in paths if p in per_job):
            out.append((os.path.basename(path.rstrip("/")) or path,
                        [(s, v, v, v) for s, v in sorted(per_job[path])]))
    else:
        groups = {}
        for path, points in per_job.items():
            steps = groups.setdefault(paths[path].get(by), {})
            for s, v in points:
                steps.setdefault(s, []).append(v)
        for key in sorted(groups, key=_group_key):
            out.append((_label(by, key), [(s, *_stats(vs)) for s, vs in sorted(groups[key].items())]))
    return out[:limit] if limit else out


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(INSTALL) from None
    return Figure


def draw(series, path, *, xlabel, ylabel, logx=False, logy=False, title=None, bands=True):
    """Write the series to `path` (.png or .svg). Each series is an SVG group `series-<i>`."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".svg"):
        raise UsageError(f"-o {path}: the file name must end in .png or .svg")
    Figure = _matplotlib()
    fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for i, (label, points) in enumerate(series):
        xs = [p[0] for p in points]
        (line,) = ax.plot(xs, [p[1] for p in points], marker="o", markersize=3, linewidth=1.5, label=label)
        line.set_gid(f"series-{i}")
        if bands and any(p[2] != p[3] for p in points):
            band = ax.fill_between(xs, [p[2] for p in points], [p[3] for p in points],
                                   color=line.get_color(), alpha=0.2, linewidth=0)
            band.set_gid(f"band-{i}")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if 1 < len(series) <= 20:
        ax.legend(fontsize="small")
    tmp = f"{path}.tmp{os.getpid()}{ext}"
    try:
        fig.savefig(tmp, format=ext[1:], metadata={"Date": None} if ext == ".svg" else None)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cmd_plot(args):
    from .histories import histories
    from .query import select

    if bool(args.curve) == bool(args.x or args.y):
        raise UsageError("give either --x KEY --y METRIC, or --curve METRIC")
    if not args.curve and not (args.x and args.y):
        raise UsageError("--x and --y go together: --x lr --y valid_err")
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in (".png", ".svg"):
        raise UsageError(f"-o {args.output}: the file name must end in .png or .svg")
    _matplotlib()  # fail before reading the tree
    rows = select(args.tree, args)
    if not rows:
        raise UsageError(f"{args.tree}: no matching jobs")
    for key in filter(None, (args.x, args.y, args.by, args.over)):
        if not any(key in row for row in rows):
            raise UsageError(f"no matching job has {key!r}")
    if args.curve:
        series = series_curves(rows, histories([r["dbdict.path"] for r in rows], metrics=[args.curve]),
                               args.curve, args.by)
        xlabel, ylabel = "step", args.curve
        if not series:
            raise UsageError(f"no matching job logged {args.curve!r} (channel.log(step, {args.curve}=...))")
    else:
        series = series_xy(rows, args.x, args.y, args.by, args.over)
        xlabel, ylabel = args.x, args.y
        if not any(points for _, points in series):
            raise UsageError(f"no matching job has numbers for both {args.x!r} and {args.y!r}")
    draw(series, args.output, xlabel=xlabel, ylabel=ylabel, logx=args.logx, logy=args.logy,
         title=args.title)
    points = sum(len(p) for _, p in series)
    print(f"wrote {args.output}: {len(series)} series, {points} points", file=sys.stderr)
    return 0
