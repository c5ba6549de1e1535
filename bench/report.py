"""`dbdict report` and `dbdict plot` against `dbdict-query --format json` of the same rows, and
the report beside the report of an earlier commit (--baseline, default: the one before issue 21).

    python bench/report.py                      # 1k and 10k jobs
    python bench/report.py --sizes 1000 --repeat 1

Whole processes, best of N, index cache off (--no-cache) for all, so the ratio is what drawing
costs on top of reading the tree. Each job has a 20-step history of two metrics (plot --curve
and the report's curves read them); every 97th job diverged (NaN). Also prints each report's
size and its load time in headless chromium (tests/browser.py: navigation start to the end
of the load event, the inline script that draws the plots and the first 1000 table rows
included; best of 5, the two reports loaded in turns), when chromium is installed.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from fake_jobs import write_job  # noqa: E402  (the tests' writer of finished jobs)
from query import best  # noqa: E402  (one timing helper for the benches)

BASELINE = "5619464"  # the report before issue 21 (svgplot.py, no panels per category)


def write_tree(tree, n, steps=20, distinct=False):
    """n finished jobs, each with a committed history; every 50th failed, every 97th NaN.
    A grid of 30 configurations over seeds, or with `distinct` a random search's shape:
    every job its own lr (10k points in each panel, 10k lines in the parallel plot)."""
    for i in range(n):
        lr = 10 ** (-4 + 3 * ((i * 0.6180339887) % 1)) if distinct else [0.1, 0.03, 0.01, 0.003, 0.001][i % 5]
        config = {"lr": lr, "seed": i // 10, "width": [64, 128, 256][i % 3], "epochs": steps,
                  "model": {"arch": ["resnet", "mlp"][i % 2]}}
        base = 0.1 + (i % 7) / 50
        history = [{"step": s, "loss": 1.0 / s, "valid_err": base + lr / s} for s in range(1, steps + 1)]
        failed = i % 50 == 0
        write_job(tree, config, {"valid_err": float("nan") if i % 97 == 0 else base + lr / steps,
                                 "loss": 1.0 / steps}, status="failed" if failed else "done",
                  error="RuntimeError: loss is nan" if failed else None, history=history)


def load_times(*paths, repeat=5):
    """Best load time of each page and its table's row count, loading them in turns in one
    browser (a loaded machine slows whole stretches of time: turns share them fairly)."""
    import browser

    if not browser.available():
        return None
    times, rows = {p: [] for p in paths}, {}
    with browser.Browser() as b:
        for _ in range(repeat):
            for path in paths:
                b.get("about:blank")
                b.get("file://" + os.path.abspath(path))  # returns once the load event fired
                times[path].append(b.js("var t=performance.timing; return t.loadEventEnd-t.navigationStart") / 1000)
                rows[path] = b.js("return document.querySelectorAll('#alljobs tbody tr').length")
    return [(min(times[p]), rows[p]) for p in paths]


def baseline_code(rev, into):
    """The dbdict_fs package as it was at `rev`, extracted under `into` (for PYTHONPATH)."""
    os.makedirs(into)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "dbdict_fs"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    return into


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated job counts")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--distinct", action="store_true", help="every job a configuration of its own")
    parser.add_argument("--baseline", default=BASELINE, metavar="REV", help=f"the older report's commit ({BASELINE})")
    args = parser.parse_args()
    cli = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; whole processes, best of {args.repeat}, "
          f"--no-cache; 'was': the report of {args.baseline}")
    print(f"{'jobs':>6} {'query':>6} {'report':>7} {'was':>6} {'plot xy':>8} {'curve':>6}  "
          f"{'report/q':>8}  {'size':>7} {'was':>7} {'ratio':>5}  {'load':>6} {'was':>6} {'ratio':>5}")
    for n in (int(s) for s in args.sizes.split(",")):
        base = tempfile.mkdtemp(prefix="dbdict-bench-report-")
        env = dict(os.environ, DBDICT_CACHE_DIR=os.path.join(base, "cache"))
        was = baseline_code(args.baseline, os.path.join(base, "was"))
        old_cli = [sys.executable, "-c", f"import sys; sys.path.insert(0, {was!r}); from dbdict_fs.cli import main; "
                   "sys.exit(main())"]
        tree, html, old_html = (os.path.join(base, name) for name in ("tree", "sweep.html", "was.html"))
        try:
            write_tree(tree, n, distinct=args.distinct)
            query = best(cli + ["query", tree, "--format", "json", "--no-cache"], args.repeat, env)
            report = best(cli + ["report", tree, "-o", html, "--metric", "valid_err", "--no-cache", "-q"],
                          args.repeat, env)
            old = best(old_cli + ["report", tree, "-o", old_html, "--metric", "valid_err", "--no-cache", "-q"],
                       args.repeat, env)
            xy = best(cli + ["plot", tree, "--x", "lr", "--y", "valid_err", "--by", "model.arch", "--over",
                             "seed", "--logx", "-o", os.path.join(base, "xy.png"), "--no-cache"], args.repeat, env)
            curve = best(cli + ["plot", tree, "--curve", "valid_err", "--by", "lr", "-o",
                                os.path.join(base, "c.png"), "--no-cache"], args.repeat, env)
            size, old_size = os.path.getsize(html), os.path.getsize(old_html)
            loaded, old_loaded = load_times(html, old_html) or (None, None)
            if loaded and loaded[1] != min(n, 1000):
                sys.exit(f"the report shows {loaded[1]} rows, not {min(n, 1000)} (its first page)")
            load = f"{loaded[0]:>5.2f}s {old_loaded[0]:>5.2f}s {loaded[0] / old_loaded[0]:>5.2f}" if loaded else "n/a"
            print(f"{n:>6} {query:>5.2f}s {report:>6.2f}s {old:>5.2f}s {xy:>7.2f}s {curve:>5.2f}s  "
                  f"{report / query:>8.2f}  {size / 1e6:>5.2f}MB {old_size / 1e6:>5.2f}MB {size / old_size:>5.2f}  "
                  f"{load}", flush=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
