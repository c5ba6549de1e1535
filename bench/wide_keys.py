"""Queries of a tree with more distinct keys than SQLite has columns (DESIGN.md 6, rev 4),
beside the same jobs with 50 keys, as whole processes, best of N.

    python bench/wide_keys.py                    # 2,000 jobs; 50, 2,500 and 20,000 distinct keys
    python bench/wide_keys.py --jobs 5000 --repeat 5

Every tree has the same N jobs and 50 keys common to all of them (seed, lr, k_0...k_47).
In the wide trees each job also has 10 result keys of its own (per-class metrics), drawn
from a pool so that the tree holds 2,500 or 20,000 distinct keys: past SQLite's column
limit the rarest keys live in the side table `jobs_extra`, and every one stays queryable.
Printed: cold (`--no-cache`) and warm times of two queries and their ratio to the 50-key
tree, wall and cpu (user + system, children included: steadier on a loaded machine). Trees are written directly in the design's format under /tmp and removed afterwards.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import query as query_bench  # noqa: E402  (bench/query.py: write_tree, best)

PER_JOB = 10


def best(cmd, repeat, env):
    """(wall, cpu) seconds of the fastest of `repeat` runs of `cmd`: cpu = user + system time
    of the process and its children (a loaded machine stretches wall time, much less cpu)."""
    import resource

    runs = []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.decode()}")
        runs.append((wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime))
    return min(w for w, _ in runs), min(c for _, c in runs)


def config_for(distinct):
    """config_of(i) for a tree of `distinct` keys (50: only the common ones)."""
    pool = distinct - 50

    def config_of(i):
        config = {"seed": i, "lr": [0.1, 0.01, 0.001][i % 3]}
        config.update((f"k_{j}", (i + j) % 7) for j in range(48))
        if pool > 0:
            config.update((f"m_{(i * PER_JOB + j) % pool}", 1.0 / (1 + j)) for j in range(PER_JOB))
        return config
    return config_of


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per tree (default 2000)")
    parser.add_argument("--keys", default="50,2500,20000", help="distinct keys of each tree (the first is the base)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    args = parser.parse_args()
    cli = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main_query; sys.exit(main_query())"]

    def queries(distinct):
        key = "m_120" if distinct > 50 else "k_5"  # the base tree has no rare keys: a common one
        return {"one job, every column (csv)": ["seed=5", "--format", "csv"],
                "filter on a rare key (csv)": ["--where", f"{key} = 1.0 or seed = 7", "--columns", f"seed,{key}",
                                               "--format", "csv"]}
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.jobs} jobs per tree; "
          f"whole processes, best of {args.repeat}")
    print(f"{'distinct keys':>13}  {'query':<28} {'cold':>8} {'warm':>8} {'cold/base':>10} {'warm/base':>10}"
          f" {'cold cpu':>9} {'warm cpu':>9} {'cpu cold/base':>14} {'cpu warm/base':>14}")
    base_times = {}
    original = query_bench.config_of
    for distinct in (int(k) for k in args.keys.split(",")):
        root = tempfile.mkdtemp(prefix="dbdict-bench-wide-")
        env = dict(os.environ, DBDICT_CACHE_DIR=os.path.join(root, "cache"), DBDICT_LOCK_DIR=os.path.join(root, "lock"))
        tree = os.path.join(root, "tree")
        try:
            query_bench.config_of = config_for(distinct)
            start = time.perf_counter()
            query_bench.write_tree(tree, args.jobs)
            time.sleep(max(0.0, start + 2.5 - time.perf_counter()))  # the cache trusts entries older than 2 s
            for name, q in queries(distinct).items():
                if distinct > 50 and "rare" in name:
                    check = subprocess.run(cli + [tree] + q, capture_output=True, text=True, env=env)
                    rows = check.stdout.splitlines()
                    assert check.returncode == 0 and len(rows) > 2, check.stderr  # seed 7's and m_120's jobs
                cold, cold_cpu = best(cli + [tree] + q + ["--no-cache"], args.repeat, env)
                best(cli + [tree] + q, 1, env)  # write the cache
                warm, warm_cpu = best(cli + [tree] + q, args.repeat, env)
                base = base_times.setdefault(name, (cold, warm, cold_cpu, warm_cpu))
                print(f"{distinct:>13,}  {name:<28} {cold:>7.3f}s {warm:>7.3f}s {cold / base[0]:>10.2f} "
                      f"{warm / base[1]:>10.2f} {cold_cpu:>8.3f}s {warm_cpu:>8.3f}s {cold_cpu / base[2]:>14.2f} "
                      f"{warm_cpu / base[3]:>14.2f}", flush=True)
        finally:
            query_bench.config_of = original
            shutil.rmtree(root, ignore_errors=True)
    print("base: the same jobs with 50 keys (its 'rare key' query filters on the common key k_5)")


if __name__ == "__main__":
    main()
