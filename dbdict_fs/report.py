"""`dbdict report`: one self-contained HTML file of a sweep (no server, no network, no CDN).

Python decides what to show (analysis.py: each key's role, the configurations, parameter
importance) and writes the static parts; the plots are drawn in the browser as inline SVG
by report.js (beside this file) from one JSON block, so the file stays small at 10k jobs and
hovering a point can name its job. `--watch S` rewrites the file every S seconds; the open
page notices a new version (report.js, "watch") and reloads itself, keeping scroll and filters.
"""

import hashlib
import html
import json
import os
import sys
import time

from .analysis import BOOK, Roles, configurations, diverged, finite, importance, summary
from .errors import UsageError

SHOWN_BOOK = ("dbdict.status", "dbdict.host", "dbdict.attempts", "dbdict.duration")
SEARCH_BOOK = ("dbdict.search", "dbdict.trial")
STATUS_ORDER = ("done", "running", "ready", "booked", "pruned", "stale", "failed", "canceled", "corrupt")
MAX_PRUNED_CURVES = 20
MAX_CURVE_RUNS = 20  # replicates averaged per curve: the histories cost a read per job
HERE = os.path.dirname(os.path.abspath(__file__))


def _config_keys(rows, sample=20):
    """Keys of the configs (the rest of a row's user keys are results): read the config.yaml
    of a few jobs only, so the report costs about one read per job, like the index."""
    from . import jobdir as jd
    from .index import flatten

    keys, seen = set(), 0
    step = max(1, len(rows) // sample)
    for row in rows[::step]:
        try:
            config = jd.read_config(row["dbdict.path"])
        except Exception:  # noqa: BLE001 - a damaged job just tells us nothing
            continue
        keys.update(k for k in flatten(config) if not k.startswith(BOOK))
        seen += 1
        if seen >= sample:
            break
    return keys


def _default_metric(rows, results):
    for name in ("valid_err", "val_loss", "loss", "error", "accuracy"):
        if name in results:
            return name
    for name in results:
        if any(finite(r.get(name)) is not None for r in rows):
            return name
    return None


def _json_value(value):
    """Table cells as JSON: NaN and infinities as the strings the query's JSON uses."""
    if diverged(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return value


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def _rel(tree, path):
    """Paths relative to the tree: shorter, and still right after an rsync elsewhere."""
    try:
        return os.path.relpath(path, tree)
    except (TypeError, ValueError):
        return path


def _short(column):
    return {"dbdict.path": "path"}.get(column, column[len(BOOK):] if column.startswith(BOOK) else column)


def _labels(rows, groups, params):
    """A label per group naming only the parameters whose values differ between the groups."""
    differ = [k for k in params if len({repr(rows[g[0]].get(k)) for g in groups}) > 1] or params
    return [", ".join(f"{k}={_fmt(rows[g[0]].get(k))}" for k in differ) or "all jobs" for g in groups]


def _curves(rows, groups, metric, histories_of):
    """Learning curves, one per group (mean and min-max over its replicates, step by step)."""
    groups = [g[:MAX_CURVE_RUNS] for g in groups]
    paths = [rows[i]["dbdict.path"] for g in groups for i in g]
    per_path = {}
    for path, step, name, value in histories_of(paths, [metric]) if paths else ():
        if name == metric and finite(step) is not None and finite(value) is not None:
            per_path.setdefault(path, {})[step] = value
    out = []
    for g in groups:
        steps = {}
        for i in g:
            for step, value in per_path.get(rows[i]["dbdict.path"], {}).items():
                steps.setdefault(step, []).append(value)
        out.append([[s, sum(v) / len(v), min(v), max(v)] for s, v in sorted(steps.items())])
    return out


class Page:
    """The sections of the report, each a method returning HTML; `data` goes to report.js."""

    def __init__(self, rows, *, tree, metric, maximize, top, over, histories_of):
        self.rows, self.tree, self.maximize, self.top = rows, tree, maximize, top
        config_keys = _config_keys(rows)
        user = list(dict.fromkeys(k for r in rows for k in r if not k.startswith(BOOK)))
        if metric is None:
            metric = _default_metric(rows, [k for k in user if k not in config_keys])
        elif not any(metric in r for r in rows):
            results = ", ".join(k for k in user if k not in config_keys) or "none"
            raise UsageError(f"--metric {metric}: no job has it (results: {results})")
        for key in over:
            if not any(key in r for r in rows):
                raise UsageError(f"--over {key}: no job has it")
        self.metric = metric
        self.roles = roles = Roles(rows, config_keys, metric, over)
        book = [c for c in SEARCH_BOOK if any(r.get(c) is not None for r in rows)] + list(SHOWN_BOOK)
        self.columns = list(dict.fromkeys(["dbdict.path"] + roles.params + roles.replicates + roles.ids
                                          + [k for k in roles.results if k != metric]
                                          + ([metric] if metric else []) + book))
        done = [i for i, r in enumerate(rows) if r.get("dbdict.status") == "done"]
        self.scored = done or list(range(len(rows)))  # the jobs whose metric counts
        self.groups = [[self.scored[i] for i in g]
                       for g in configurations([rows[i] for i in self.scored], roles.params)]
        self.stats = [summary(rows, g, metric) for g in self.groups] if metric else []
        sign = -1 if maximize else 1
        ranked = sorted((j for j, s in enumerate(self.stats) if s[0] is not None),
                        key=lambda j: sign * self.stats[j][0])
        self.best = ranked[:top]
        self.diverged = [i for i, r in enumerate(rows) if metric and diverged(r.get(metric))]
        self.histories_of = histories_of

    def data(self, watch):
        rows, roles, metric = self.rows, self.roles, self.metric
        col = {c: i for i, c in enumerate(self.columns)}
        params = []
        for key in roles.params:
            values = [finite(rows[i].get(key)) for i in self.scored]
            values = [v for v in values if v is not None]
            cats = sorted({_fmt(rows[i].get(key)) for i in self.scored}) if roles.kind[key] == "cat" else None
            params.append({"key": key, "col": col[key], "kind": roles.kind[key], "cats": cats,
                           "log": bool(values) and min(values) > 0 and max(values) / min(values) >= 10})
        data = {"columns": [_short(c) for c in self.columns], "metric": metric, "maximize": self.maximize,
                "metricCol": col.get(metric), "params": params, "watch": watch,
                "rows": [[_rel(self.tree, r.get(c)) if c == "dbdict.path" else _json_value(r.get(c))
                          for c in self.columns] for r in rows],
                # a configuration: [its row numbers, mean, min, max, how many diverged]
                "groups": [[g, s[0], s[1], s[2], s[4]] for g, s in zip(self.groups, self.stats)]}
        if metric and self.histories_of is not None and self.best:
            shown = [self.groups[j] for j in self.best]
            pruned = [[i] for i, r in enumerate(rows) if r.get("dbdict.status") == "pruned"][:MAX_PRUNED_CURVES]
            curves = zip(_labels(rows, shown + pruned, roles.params), shown + pruned,
                         _curves(rows, shown + pruned, metric, self.histories_of))
            data["curves"] = [{"label": label, "rows": g, "pruned": k >= len(shown), "pts": pts}
                              for k, (label, g, pts) in enumerate(curves) if pts]
        searches = {}
        for i, r in enumerate(rows):
            if r.get("dbdict.search") is not None and finite(r.get("dbdict.trial")) is not None:
                searches.setdefault(str(r["dbdict.search"]), []).append(
                    [r["dbdict.trial"], _json_value(r.get(metric)), i, r.get("dbdict.status")])
        data["searches"] = [{"name": n, "trials": sorted(t, key=lambda trial: trial[0])}
                            for n, t in sorted(searches.items())]
        return data

    def header(self, title):
        roles, rows = self.roles, self.rows
        out = [f"<h1>{html.escape(title)}</h1><p class=sub>{len(rows)} jobs in "
               f"<code>{html.escape(str(self.tree))}</code>"]
        if self.metric:
            out.append(f"; ranked by <b>{html.escape(self.metric)}</b> "
                       f"({'higher' if self.maximize else 'lower'} is better)")
        out.append("</p>")
        if roles.constant:
            out.append("<p class=sub id=constant>same in every job: " + ", ".join(
                f"<code>{html.escape(k)}={html.escape(_fmt(v))}</code>" for k, v in roles.constant.items()) + "</p>")
        if roles.replicates:
            out.append("<p class=sub id=replicates>averaged over: " + ", ".join(
                f"<code>{html.escape(k)}</code> ({len({repr(r.get(k)) for r in rows})} values)"
                for k in roles.replicates) + " (mean, and min to max)</p>")
        if roles.ids:
            out.append("<p class=sub id=ids>a different value in every job (not plotted): "
                       + ", ".join(f"<code>{html.escape(k)}</code>" for k in roles.ids) + "</p>")
        return "".join(out)

    def status(self):
        counts = {}
        for r in self.rows:
            counts[r.get("dbdict.status") or "?"] = counts.get(r.get("dbdict.status") or "?", 0) + 1
        out = ["<section id=status><h2>Status</h2><div class=counts>"]
        for st in sorted(counts, key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else 99, s)):
            out.append(f"<div class='count st-{html.escape(st)}'><b>{counts[st]}</b>"
                       f"<span>{html.escape(st)}</span></div>")
        if self.diverged:
            out.append(f"<div class='count st-diverged' id=diverged-count><b>{len(self.diverged)}</b>"
                       f"<span>diverged</span></div>")
        return "".join(out) + "</div></section>"

    def best_table(self):
        if not self.best:
            return ""
        params = self.roles.params
        reps = bool(self.roles.replicates)
        head = [self.metric] + (["runs", "min", "max"] if reps else []) + params + ["path"]
        body = []
        for j in self.best:
            g, (mean, lo, hi, n, bad) = self.groups[j], self.stats[j]
            first = self.rows[g[0]]
            runs = f"{n}" + (f" (+{bad} diverged)" if bad else "")
            cells = [_fmt(mean)] + ([runs, _fmt(lo), _fmt(hi)] if reps else [])
            cells += [_fmt(first.get(k)) for k in params]
            link = _rel(self.tree, first.get("dbdict.path"))
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                        + f"<td><a href='#' class=row-link data-row={g[0]}>{html.escape(link)}</a></td></tr>")
        what = "configurations" if reps else "jobs"
        return (f"<section id=best><h2>Best {len(self.best)} {what} by {html.escape(self.metric)}</h2>"
                + _table(head, body) + "</section>")

    def plots(self):
        roles, metric = self.roles, self.metric
        if not metric:
            return ""
        out = []
        if roles.params:
            out.append(f"<section id=params><h2>{html.escape(metric)} against each parameter</h2>"
                       "<p class=hint>One point per configuration" + (" (mean over "
                       + ", ".join(map(html.escape, roles.replicates)) + "; the bar spans min to max)"
                       if roles.replicates else "") + "; diverged runs are red crosses at the top edge. "
                       "Hover a point for its parameters; click it to find its jobs below.</p><div class=plots>")
            for key in roles.params:
                out.append(f"<figure class=plot data-param='{html.escape(key, quote=True)}'><figcaption><b>"
                           f"{html.escape(key)}</b> ({'categories' if roles.kind[key] == 'cat' else 'numeric'})"
                           "</figcaption><div class=svg></div></figure>")
            out.append("</div></section>")
        if len(roles.params) >= 1:
            out.append("<section id=parallel><h2>Parallel coordinates</h2><figure class='plot wide' data-plot=parallel>"
                       f"<figcaption>each line a configuration, coloured by {html.escape(metric)} (dark is better);"
                       " drag along an axis to keep only the jobs in that range (click the axis to clear)"
                       "</figcaption><div class=svg></div></figure></section>")
        out.append(self.importance())
        if self.histories_of is not None and self.best:
            out.append("<section id=curves><h2>Learning curves</h2><figure class='plot wide' data-plot=curves>"
                       f"<figcaption>{html.escape(metric)} against the step, best {len(self.best)} "
                       + ("configurations" if roles.replicates else "jobs")
                       + (" and pruned trials (dashed)" if any(r.get("dbdict.status") == "pruned" for r in self.rows)
                          else "") + "; click a legend entry to find its jobs</figcaption><div class=svg></div>"
                       "</figure></section>")
        if any(r.get("dbdict.search") is not None for r in self.rows):
            out.append("<section id=searches><h2>Searches</h2><div>")
            for name in sorted({str(r["dbdict.search"]) for r in self.rows if r.get("dbdict.search") is not None}):
                out.append("<figure class='plot wide' data-plot=best-so-far "
                           f"data-search='{html.escape(name, quote=True)}'>"
                           f"<figcaption>search <b>{html.escape(name)}</b>: best {html.escape(metric)} so far "
                           "against the trial number (pruned trials pale orange)</figcaption>"
                           "<div class=svg></div></figure>")
            out.append("</div></section>")
        return "".join(out)

    def importance(self):
        kinds = {k: self.roles.kind[k] for k in self.roles.params}
        points = [({k: self.rows[g[0]].get(k) for k in kinds}, s[0]) for g, s in zip(self.groups, self.stats)
                  if s[0] is not None and all(self.rows[g[0]].get(k) is not None for k in kinds)]
        method, shares = importance(points, kinds)
        if not shares:
            return ""
        bars = "".join(f"<div class=bar data-key='{html.escape(k, quote=True)}' data-share='{v:.4f}'><span>"
                       f"{html.escape(k)}</span><i style='width:{v * 100:.1f}%'></i><b>{v:.2f}</b></div>"
                       for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
        return ("<section id=importance><h2>Parameter importance</h2><figure class=plot data-plot=importance>"
                f"<figcaption>share of the variance of {html.escape(self.metric)} each parameter explains "
                f"({html.escape(method)}; the shares sum to 1)</figcaption>{bars}</figure></section>")

    def diverged_table(self):
        if not self.diverged:
            return ""
        head = ["path", self.metric, "status"] + self.roles.params + self.roles.replicates
        body = []
        for i in self.diverged:
            r = self.rows[i]
            cells = [_fmt(r.get(self.metric)), _fmt(r.get("dbdict.status"))] + \
                [_fmt(r.get(k)) for k in self.roles.params + self.roles.replicates]
            body.append(f"<tr><td><a href='#' class=row-link data-row={i}>"
                        f"{html.escape(_rel(self.tree, r.get('dbdict.path')))}</a></td>"
                        + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        return (f"<section id=diverged><h2>Diverged jobs ({len(self.diverged)})</h2>"
                f"<p class=hint>{html.escape(self.metric)} is NaN or infinite</p>" + _table(head, body) + "</section>")

    def failed_table(self):
        failed = [r for r in self.rows if r.get("dbdict.status") in ("failed", "corrupt")]
        if not failed:
            return ""
        cols = ["dbdict.path", "dbdict.error", "dbdict.host", "dbdict.attempts"]
        cell = (lambda r, c: _rel(self.tree, r.get(c)) if c == "dbdict.path" else r.get(c))  # noqa: E731
        body = ["<tr>" + "".join(f"<td>{html.escape(_fmt(cell(r, c)))}</td>"
                                 for c in cols) + "</tr>" for r in failed]
        return (f"<section id=failed><h2>Failed jobs ({len(failed)})</h2>" + _table(map(_short, cols), body)
                + "</section>")

    def jobs_table(self):
        heads = "".join(f"<th data-col={i}>{html.escape(_short(c))}</th>" for i, c in enumerate(self.columns))
        return (f"<section id=jobs><h2>All jobs ({len(self.rows)})</h2>"
                "<p><input id=filter type=search placeholder='filter rows (text)' size=40> "
                "<span id=shown></span> <button id=more style='display:none'></button> <button id=clear "
                "style='display:none'>clear the axis filters</button> · click a column to sort (sorting and "
                "filters apply to every job)</p><div class=scroll><table id=alljobs class=jobs><thead><tr>"
                + heads + "</tr></thead><tbody></tbody></table></div></section>")


def _table(head, body):
    return ("<div class=scroll><table class=small><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(body) + "</tbody></table></div>")


def _asset(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


def build(rows, *, tree, metric=None, maximize=False, top=10, title=None, histories_of=None, page=1000,
          over=(), watch=0):
    """The report's HTML text for the index rows of a sweep. The job table shows the first
    `page` rows of the current sort and filter (all of them on a click): a browser lays out
    10k table rows in seconds, 1000 in a fraction of one."""
    p = Page(rows, tree=tree, metric=metric, maximize=maximize, top=top, over=tuple(over or ()),
             histories_of=histories_of)
    title = title or f"Sweep {tree}"
    data = json.dumps(p.data(watch), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    body = "".join([p.header(title), p.status(), p.best_table(), p.plots(), p.diverged_table(),
                    p.failed_table(), p.jobs_table(),
                    "<script type='application/json' id=data>", data.replace("</", "<\\/"), "</script>",
                    "<script>var PAGE=", str(int(page)), ";", _asset("report.js"), "</script></body></html>\n"])
    # the version the open page compares (--watch): the content, not the time it was written
    stamp = hashlib.sha1(body.encode()).hexdigest()[:16]
    return "".join([
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>", _asset("report.css"), "</style></head><body>",
        # a copy of this page loaded by the open one (report.js, watch) says its version and stops
        f"<script>var STAMP='{stamp}';if(window.parent!==window&&window.name==='dbdict-watch')"
        "{window.parent.postMessage({dbdictStamp:STAMP},'*');window.stop();}</script>",
        f"<p class='sub written'>written {html.escape(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}"
        + (f", rewritten every {watch:g}s while <code>dbdict report --watch</code> runs; this page reloads itself"
           if watch else "") + "</p>", body])


def _write(path, text):
    from .jobdir import atomic_write

    atomic_write(path, text.encode("utf-8"), fsync=False)


def cmd_report(args):
    from .histories import histories
    from .query import restore_nan, select

    if not args.output.lower().endswith((".html", ".htm")):
        raise UsageError(f"-o {args.output}: the report is HTML: name it something.html")

    def write(watch=0):
        rows = restore_nan(select(args.tree, args))  # NaN results are diverged runs, not missing ones
        if not rows:
            raise UsageError(f"{args.tree}: no matching jobs")
        _write(args.output, build(rows, tree=args.tree, metric=args.metric, maximize=args.maximize, top=args.top,
                                  title=args.title, page=max(1, args.rows), over=args.over or (), watch=watch,
                                  histories_of=lambda paths, metrics: histories(paths, metrics=metrics)))

    write(args.watch or 0)
    if not args.quiet:
        print(os.path.abspath(args.output), flush=True)
    if not args.watch:
        return 0
    written = 1
    try:
        while True:
            time.sleep(args.watch)
            write(args.watch)
            written += 1
    except KeyboardInterrupt:
        print(f"stopped watching: {args.output} written {written} times", file=sys.stderr)
        return 0
