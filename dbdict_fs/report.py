"""`dbdict report`: one self-contained HTML file of a sweep (no server, no network, no CDN).

Plots are inline SVG drawn here (svgplot.py); the job table is JSON rendered and sorted by a
few lines of inline JavaScript, so 10k jobs stay a few MB and load in about a second.
"""

import html
import json
import math
import os
import time

from .errors import UsageError
from .plot import _num, series_curves, series_xy
from .svgplot import svg_plot

BOOK = "dbdict."
SHOWN_BOOK = ("dbdict.status", "dbdict.host", "dbdict.attempts", "dbdict.duration")
STATUS_ORDER = ("done", "running", "ready", "booked", "stale", "failed", "canceled", "corrupt")


def _config_keys(rows, sample=20):
    """Keys of the configs (the rest of a row's user keys are results): read the config.yaml
    of a few jobs only, so the report costs about one read per job, like the index."""
    from . import jobdir as jd

    keys, seen = set(), 0
    step = max(1, len(rows) // sample)
    for row in rows[::step]:
        try:
            config = jd.read_config(row["dbdict.path"])
        except Exception:  # noqa: BLE001 - a damaged job just tells us nothing
            continue
        from .index import flatten

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
        if any(_num(r.get(name)) is not None for r in rows):
            return name
    return None


def build(rows, *, tree, metric=None, maximize=False, top=10, title=None, histories_of=None, page=1000):
    """The report's HTML text for the index rows of a sweep. The job table shows the first
    `page` rows of the current sort and filter (all of them on a click): a browser lays out
    10k table rows in seconds, 1000 in a fraction of one."""
    user = list(dict.fromkeys(k for r in rows for k in r if not k.startswith(BOOK)))
    config_keys = _config_keys(rows)
    params = [k for k in user if k in config_keys] or [k for k in user]
    results = [k for k in user if k not in config_keys]
    if metric is None:
        metric = _default_metric(rows, results)
    elif not any(metric in r for r in rows):
        raise UsageError(f"--metric {metric}: no job has it (results: {', '.join(results) or 'none'})")
    numeric = [k for k in params if k != metric and len({_num(r.get(k)) for r in rows} - {None}) > 1]

    done = [r for r in rows if r.get("dbdict.status") == "done"] or rows
    ranked = sorted((r for r in done if _num(r.get(metric)) is not None),
                    key=lambda r: -r[metric] if maximize else r[metric]) if metric else []
    best = ranked[:top]
    counts = {}
    for r in rows:
        counts[r.get("dbdict.status") or "?"] = counts.get(r.get("dbdict.status") or "?", 0) + 1
    failed = [r for r in rows if r.get("dbdict.status") in ("failed", "corrupt")]

    columns = ["dbdict.path"] + params + [k for k in results if k != metric] + ([metric] if metric else []) \
        + list(SHOWN_BOOK)
    columns = list(dict.fromkeys(columns))
    table = [[_rel(tree, r.get(c)) if c == "dbdict.path" else _cell(r.get(c)) for c in columns] for r in rows]

    out = [_HEAD.format(title=html.escape(title or f"sweep {tree}"))]
    out.append(f"<h1>{html.escape(title or 'Sweep ' + str(tree))}</h1>")
    out.append(f"<p class=sub>{len(rows)} jobs in <code>{html.escape(str(tree))}</code>, "
               f"{html.escape(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))}"
               + (f"; ranked by <b>{html.escape(metric)}</b> ({'higher' if maximize else 'lower'} is better)"
                  if metric else "") + "</p>")
    out.append("<section id=status><h2>Status</h2><div class=counts>")
    for status in sorted(counts, key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else 99, s)):
        out.append(f"<div class='count st-{html.escape(status)}'><b>{counts[status]}</b>"
                   f"<span>{html.escape(status)}</span></div>")
    out.append("</div></section>")

    if best:
        out.append(f"<section id=best><h2>Best {len(best)} jobs by {html.escape(metric)}</h2>")
        out.append(_static_table(best, [metric] + params + ["dbdict.path"], tree))
        out.append("</section>")

    if metric and numeric:
        out.append(f"<section id=params><h2>{html.escape(metric)} against each parameter</h2><div class=plots>")
        for key in numeric:
            series = series_xy(rows, key, metric, over=True)
            dots = [(x, y) for r in rows for x, y in [(_num(r.get(key)), _num(r.get(metric)))]
                    if x is not None and y is not None]
            xs = [x for x, _ in dots]
            logx = bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 10
            out.append(svg_plot([("mean", [p for p in series[0][1]])] if series else [], xlabel=key,
                                ylabel=metric, logx=logx, dots=dots, name=f"param-{key}"))
        out.append("</div></section>")

    if best and histories_of is not None:
        hist = histories_of([r["dbdict.path"] for r in best], [metric])
        curves = series_curves(best, hist, metric)
        if curves:
            out.append(f"<section id=curves><h2>Learning curves of the best {len(curves)} jobs</h2>")
            out.append(svg_plot(curves, xlabel="step", ylabel=metric, name="curves", legend=True,
                                width=760, height=360))
            out.append("</section>")

    if failed:
        out.append(f"<section id=failed><h2>Failed jobs ({len(failed)})</h2>")
        out.append(_static_table(failed, ["dbdict.path", "dbdict.error", "dbdict.host", "dbdict.attempts"], tree))
        out.append("</section>")

    out.append(f"<section id=jobs><h2>All jobs ({len(rows)})</h2>"
               "<p><input id=filter type=search placeholder='filter rows (text)' size=40> "
               "<span id=shown></span> <button id=more style='display:none'></button>"
               " · click a column to sort (sorting and the filter apply to every job)</p>"
               "<table id=alljobs class=jobs><thead><tr>")
    for i, c in enumerate(columns):
        out.append(f"<th data-col={i}>{html.escape(_short(c))}</th>")
    out.append("</tr></thead><tbody></tbody></table></section>")
    data = json.dumps({"columns": columns, "rows": table}, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False)
    out.append("<script type='application/json' id=data>" + data.replace("</", "<\\/") + "</script>")
    out.append("<script>var PAGE=" + str(int(page)) + ";" + _JS + "</script></body></html>\n")
    return "".join(out)


def _rel(tree, path):
    """Paths relative to the tree: shorter, and still right after an rsync elsewhere."""
    try:
        return os.path.relpath(path, tree)
    except (TypeError, ValueError):
        return path


def _short(column):
    return {"dbdict.path": "path"}.get(column, column[len(BOOK):] if column.startswith(BOOK) else column)


def _cell(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return value


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def _static_table(rows, columns, tree):
    rows = [dict(r, **{"dbdict.path": _rel(tree, r.get("dbdict.path"))}) for r in rows]
    head = "".join(f"<th>{html.escape(_short(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table class=small><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cmd_report(args):
    from .histories import histories
    from .query import select

    if not args.output.lower().endswith((".html", ".htm")):
        raise UsageError(f"-o {args.output}: the report is HTML: name it something.html")
    rows = select(args.tree, args)
    if not rows:
        raise UsageError(f"{args.tree}: no matching jobs")
    text = build(rows, tree=args.tree, metric=args.metric, maximize=args.maximize, top=args.top,
                 title=args.title, page=max(1, args.rows), histories_of=lambda paths, metrics: histories(paths, metrics=metrics))
    tmp = f"{args.output}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if not args.quiet:
        print(os.path.abspath(args.output))
    return 0


_HEAD = """<!DOCTYPE html><html lang=en><head><meta charset=utf-8>
<meta name=viewport content='width=device-width, initial-scale=1'>
<title>{title}</title><style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}}
h1{{margin:0 0 .2em}} h2{{margin-top:1.6em;font-size:1.2em}} .sub{{color:#666;margin:0}}
.counts{{display:flex;gap:.8em;flex-wrap:wrap}} .count{{padding:.5em 1em;border-radius:6px;background:#eef}}
.count b{{display:block;font-size:1.6em}} .st-done{{background:#dfd}} .st-failed,.st-corrupt{{background:#fdd}}
.st-running{{background:#ffd}} table{{border-collapse:collapse}} td,th{{padding:2px 8px;text-align:left;
border-bottom:1px solid #eee;white-space:nowrap}} th{{background:#f4f4f4;position:sticky;top:0}}
table.jobs th{{cursor:pointer}} th.asc::after{{content:' \\25B2'}} th.desc::after{{content:' \\25BC'}}
.plots{{display:flex;flex-wrap:wrap;gap:1em}} svg text{{font:11px system-ui,sans-serif;fill:#333}}
</style></head><body>
"""

# Sorting and filtering of the job table; builds rows as one HTML string (fast at 10k rows).
_JS = r"""
(function(){
var d=JSON.parse(document.getElementById('data').textContent),rows=d.rows,view=rows.slice();
var tb=document.querySelector('#alljobs tbody'),ths=document.querySelectorAll('#alljobs th');
function esc(v){return String(v).replace(/&/g,'&amp;').replace(/</g,'&lt;').replace(/>/g,'&gt;');}
function fmt(v){if(v===null||v===undefined)return '';if(typeof v==='number'&&!Number.isInteger(v))return String(+v.toPrecision(5));
if(typeof v==='object')return JSON.stringify(v);return String(v);}
var limit=PAGE;
function draw(){var h=[],n=Math.min(view.length,limit);for(var i=0;i<n;i++){var r=view[i],c=[];
for(var j=0;j<r.length;j++)c.push('<td>'+esc(fmt(r[j]))+'</td>');h.push('<tr>'+c.join('')+'</tr>');}
tb.innerHTML=h.join('');var more=document.getElementById('more');
document.getElementById('shown').textContent=(n<view.length?'first '+n+' of ':'')+view.length+' of '+rows.length+' jobs';
more.style.display=n<view.length?'':'none';more.textContent='show all '+view.length;}
document.getElementById('more').addEventListener('click',function(){limit=Infinity;draw();});
function cmp(a,b){if(a===b)return 0;if(a===null||a===undefined||a==='')return 1;if(b===null||b===undefined||b==='')return -1;
if(typeof a==='number'&&typeof b==='number')return a-b;return String(a)<String(b)?-1:1;}
var sortCol=-1,dir=1;
ths.forEach(function(th){th.addEventListener('click',function(){var c=+th.dataset.col;
dir=(c===sortCol)?-dir:1;sortCol=c;ths.forEach(function(t){t.className='';});th.className=dir>0?'asc':'desc';
view.sort(function(a,b){var x=a[c],y=b[c];if(x===null||x===undefined||x==='')return (y===null||y===undefined||y==='')?0:1;
if(y===null||y===undefined||y==='')return -1;return dir*cmp(x,y);});draw();});});
document.getElementById('filter').addEventListener('input',function(e){var q=e.target.value.toLowerCase();
view=rows.filter(function(r){return !q||r.some(function(v){return fmt(v).toLowerCase().indexOf(q)>=0;});});
sortCol=-1;ths.forEach(function(t){t.className='';});draw();});
draw();})();
"""

