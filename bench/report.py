"""`dbdict report` and `dbdict plot` against `dbdict-query --format json` of the same rows.

    python bench/report.py                      # 1k and 10k jobs
    python bench/report.py --sizes 1000 --repeat 1

Whole processes, best of N, index cache off (--no-cache) for all three, so the ratio is what
drawing costs on top of reading the tree. Each job has a 20-step history of two metrics
(plot --curve and the report's curves read them). Also prints the report's size and its load
time in headless chromium (tests/browser.py), when chromium is installed: the job table
shows its first 1000 rows until 'show all' is clicked.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from query import best  # noqa: E402  (one timing helper for the benches)


def write_tree(tree, n, steps=20):
    """n finished jobs in the design's format, each with a committed history."""
    for i in range(n):
        lr = [0.1, 0.03, 0.01, 0.003, 0.001][i % 5]
        config = {"lr": lr, "seed": i // 10, "width": [64, 128, 256][i % 3], "epochs": steps,
                  "model": {"arch": ["resnet", "mlp"][i % 2]}}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
        job = os.path.join(tree, digest[:2], digest)
        os.makedirs(os.path.join(job, "workdir"))
        book = {"experiment": "mypkg.train:main", "hash": digest, "created": "2026-11-24T10:00:00Z"}
        with open(os.path.join(job, "config.yaml"), "w") as f:
            f.write(json.dumps(dict(config, dbdict=book), indent=2) + "\n")
        base = 0.1 + (i % 7) / 50
        lines = "".join(json.dumps({"step": s, "loss": 1.0 / s, "valid_err": base + lr / s}) + "\n"
                        for s in range(1, steps + 1))
        with open(os.path.join(job, "history.1.jsonl"), "w") as f:
            f.write(lines)
        failed = i % 50 == 0
        state = dict(config, valid_err=base + lr / steps, loss=1.0 / steps)
        state["dbdict"] = dict(book, status="failed" if failed else "done", priority=1.0, epoch=1,
                               requeue_epoch=0, attempts=1, host=f"node{i % 16}", pid=1234,
                               start="2026-11-24T10:00:01Z", end="2026-11-24T10:05:00Z", duration=299.0,
                               error="RuntimeError: loss is nan" if failed else None,
                               history={"epoch": 1, "bytes": len(lines.encode())})
        with open(os.path.join(job, "state.1.yaml"), "w") as f:
            f.write(json.dumps(state, indent=2) + "\n")
        os.symlink("state.1.yaml", os.path.join(job, "state.yaml"))
        with open(os.path.join(job, "claim.1"), "w") as f:
            json.dump({"host": "node17", "pid": 1234, "lease": 600.0, "heartbeat": 30.0}, f)
        for name in ("stdout", "stderr"):
            open(os.path.join(job, name), "w").close()


def load_time(path):
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    try:
        import browser
    except ImportError:
        return None
    if not browser.available():
        return None
    with browser.Browser() as b:
        times = []
        for _ in range(3):
            b.get("about:blank")
            b.get("file://" + os.path.abspath(path))  # returns once the load event fired
            times.append(b.js("var t=performance.timing; return t.loadEventEnd-t.navigationStart") / 1000)
            rows = b.js("return document.querySelectorAll('#alljobs tbody tr').length")
        return min(times), rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated job counts")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    args = parser.parse_args()
    cli = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; whole processes, best of {args.repeat}, --no-cache")
    print(f"{'jobs':>6} {'query':>7} {'report':>7} {'plot xy':>8} {'plot curve':>10}  "
          f"{'report/q':>8} {'xy/q':>6} {'curve/q':>7}  {'html size':>9} {'load':>6}")
    for n in (int(s) for s in args.sizes.split(",")):
        base = tempfile.mkdtemp(prefix="dbdict-bench-report-")
        env = dict(os.environ, DBDICT_CACHE_DIR=os.path.join(base, "cache"))
        tree, html = os.path.join(base, "tree"), os.path.join(base, "sweep.html")
        try:
            write_tree(tree, n)
            query = best(cli + ["query", tree, "--format", "json", "--no-cache"], args.repeat, env)
            report = best(cli + ["report", tree, "-o", html, "--metric", "valid_err", "--no-cache", "-q"],
                          args.repeat, env)
            xy = best(cli + ["plot", tree, "--x", "lr", "--y", "valid_err", "--by", "model.arch", "--over",
                             "seed", "--logx", "-o", os.path.join(base, "xy.png"), "--no-cache"], args.repeat, env)
            curve = best(cli + ["plot", tree, "--curve", "valid_err", "--by", "lr", "-o",
                                os.path.join(base, "c.png"), "--no-cache"], args.repeat, env)
            loaded = load_time(html)
            size = os.path.getsize(html)
            load = f"{loaded[0]:.2f}s" if loaded else "n/a"
            if loaded and loaded[1] != min(n, 1000):
                sys.exit(f"the report shows {loaded[1]} rows, not {min(n, 1000)} (its first page)")
            print(f"{n:>6} {query:>6.2f}s {report:>6.2f}s {xy:>7.2f}s {curve:>9.2f}s  {report / query:>8.2f} "
                  f"{xy / query:>6.2f} {curve / query:>7.2f}  {size / 1e6:>7.2f}MB {load:>6}", flush=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
