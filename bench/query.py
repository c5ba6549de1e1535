"""Query speed against the floor (DESIGN.md 6), as whole processes, best of N.

    python bench/query.py                 # 1k, 10k and 100k jobs
    python bench/query.py --sizes 1000,10000 --repeat 3

The floor: one process walking the tree, listing each job directory, json-parsing its
latest state file and inserting the rows into in-memory SQLite. Trees are written
directly in the design's format under /tmp and removed afterwards. Goals (DESIGN 6, rev 3):
cold (`--no-cache`, parsing on every core) <= 0.8x the floor at 100k jobs, warm <= 0.3x.

Where `signac` is importable (optional, never a dependency), the same jobs are also written
as a signac project and its `find_jobs` timed the same way, without and with its statepoint
cache (`update_cache()`). Times are printed, never asserted.
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

FLOOR = r'''
import json, os, sqlite3, sys
tree = sys.argv[1]
rows, stack = [], [tree]
def flat(d, prefix, out):
    for k, v in d.items():
        if isinstance(v, dict):
            flat(v, prefix + k + ".", out)
        else:
            out[prefix + k] = json.dumps(v) if isinstance(v, list) else v
    return out
while stack:
    for e in os.scandir(stack.pop()):
        if e.name[0] == "." or not e.is_dir(follow_symlinks=False):
            continue
        names = os.listdir(e.path)
        if "config.yaml" not in names:
            stack.append(e.path)
            continue
        epoch = max(int(n[6:-5]) for n in names if n.startswith("state.") and n[6:-5].isdigit())
        with open(os.path.join(e.path, "state.%d.yaml" % epoch), "rb") as f:
            rows.append(flat(json.load(f), "", {"path": e.path}))
cols = sorted({k for r in rows for k in r})
conn = sqlite3.connect(":memory:")
conn.execute("CREATE TABLE jobs (%s)" % ", ".join('"%s"' % c for c in cols))
conn.executemany("INSERT INTO jobs VALUES (%s)" % ", ".join("?" * len(cols)), [tuple(r.get(c) for c in cols) for r in rows])
print(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
'''


def write_tree(tree, n):
    """n jobs as `create` leaves them and a worker finishes them: config, state.1, claim.1."""
    for i in range(n):
        config = config_of(i)
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
        job = os.path.join(tree, digest[:2], digest)
        os.makedirs(os.path.join(job, "workdir"))
        book = {"experiment": "mypkg.train:main", "hash": digest, "created": "2026-11-24T10:00:00Z"}
        with open(os.path.join(job, "config.yaml"), "w") as f:
            f.write(f"dbdict:\n  experiment: {book['experiment']}\n  hash: {digest}\n"
                    f"  created: '{book['created']}'\n" + "".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
        done = i % 10 != 0
        state = dict(config, valid_err=1.0 / (i + 1) if done else None, train_err=0.5 if done else None)
        state["dbdict"] = dict(book, status="done" if done else "ready", priority=1.0, epoch=1, requeue_epoch=0,
                               attempts=1, host="node17", pid=1234, start="2026-11-24T10:00:01Z",
                               end="2026-11-24T10:05:00Z", duration=299.0, returned="complete")
        with open(os.path.join(job, "state.1.yaml"), "w") as f:
            f.write(json.dumps(state, indent=2) + "\n")
        os.symlink("state.1.yaml", os.path.join(job, "state.yaml"))
        with open(os.path.join(job, "claim.1"), "w") as f:
            json.dump({"host": "node17", "pid": 1234, "lease": 600.0, "heartbeat": 30.0}, f)
        for name in ("stdout", "stderr"):
            open(os.path.join(job, name), "w").close()


SIGNAC_FIND = r'''
import sys, signac
project = signac.get_project(sys.argv[1])
print(len(list(project.find_jobs({"seed": 5}))))
'''


def config_of(i):
    return {"lr": [0.1, 0.01, 0.001][i % 3], "seed": i, "batch": 32, "epochs": 10,
            "model": {"arch": ["resnet", "mlp"][i % 2], "depth": 18 + i % 4},
            "opt": {"name": "sgd", "momentum": 0.9}, "tags": ["a", "b"]}


def write_signac(root, n):
    """The same n configurations as a signac project (statepoints, and the results as the
    job document), or None when signac is not importable."""
    try:
        import signac
    except ImportError:
        return None
    project = signac.init_project(root)
    for i in range(n):
        job = project.open_job(config_of(i)).init()
        if i % 10:
            job.document.update(valid_err=1.0 / (i + 1), train_err=0.5, status="done")
    return project


def best(cmd, repeat, env):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.decode()}")
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated job counts")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the trees (printed) instead of removing them")
    args = parser.parse_args()
    query = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main_query; sys.exit(main_query())"]
    try:
        import signac
        have_signac = f"signac {signac.__version__}"
    except ImportError:
        have_signac = None
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; times are whole processes, best of {args.repeat}")
    if not have_signac:
        print("signac is not importable here: its columns are skipped (pip install signac to compare)")
    head = f"{'jobs':>7} {'floor':>8} {'cold':>8} {'warm':>8} {'cold/floor':>11} {'warm/floor':>11}"
    if have_signac:
        head += f" {'signac':>8} {'cached':>8} {'sig/floor':>10} {'cached/floor':>13}"
    print(head)
    for n in (int(s) for s in args.sizes.split(",")):
        base = tempfile.mkdtemp(prefix="dbdict-bench-query-")
        # the node lock lives beside the cache, on the same local disk (DESIGN 4's last bullet)
        env = dict(os.environ, DBDICT_CACHE_DIR=os.path.join(base, "cache"), DBDICT_LOCK_DIR=os.path.join(base, "lock"))
        tree = os.path.join(base, "tree")
        try:
            start = time.perf_counter()
            write_tree(tree, n)
            built = time.perf_counter() - start
            select = [tree, "seed=5", "--format", "csv"]
            floor = best([sys.executable, "-c", FLOOR, tree], args.repeat, env)
            cold = best(query + select + ["--no-cache"], args.repeat, env)
            # The cache trusts only entries unchanged for 2 s (coarse timestamps, DESIGN.md 6):
            # "warm" means re-querying a tree that has stood still at least that long.
            time.sleep(max(0.0, start + built + 2.5 - time.perf_counter()))
            best(query + select, 1, env)  # write the cache
            warm = best(query + select, args.repeat, env)
            line = f"{n:>7} {floor:>7.3f}s {cold:>7.3f}s {warm:>7.3f}s {cold / floor:>11.2f} {warm / floor:>11.2f}"
            if have_signac:
                project = write_signac(os.path.join(base, "signac"), n)
                find = [sys.executable, "-c", SIGNAC_FIND, project.path]
                uncached = best(find, args.repeat, env)
                project.update_cache()
                cached = best(find, args.repeat, env)
                line += f" {uncached:>7.3f}s {cached:>7.3f}s {uncached / floor:>10.2f} {cached / floor:>13.2f}"
            print(line + f"   (tree written in {built:.0f}s)", flush=True)
        finally:
            if args.keep:
                print(f"kept {base}")
            else:
                shutil.rmtree(base, ignore_errors=True)
    print(f"query: dbdict-query TREE {' '.join(select[1:])} [--no-cache]; goals: cold/floor <= 0.8 at 100k "
          f"on 2+ cores, warm/floor <= 0.3")
    if have_signac:
        print(f"signac ({have_signac}): project.find_jobs({{'seed': 5}}) in a new process, without and with "
              "update_cache()")


if __name__ == "__main__":
    main()
