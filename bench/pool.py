"""The pool's overhead: `dbdict work TREE --workers N` against N hand-started `dbdict work TREE`
processes, on the same trivial jobs, N = the number of cores by default (issue 22).

Each round creates two identical trees, then times, alternately, the pool on one and N
plain workers started at once on the other: wall clock from the first start to the last exit,
and CPU seconds (user + system) of every process involved (the pool, workers, shepherds,
experiments: RUSAGE_CHILDREN), which a loaded machine disturbs far less than the wall clock.
Prints each round and the ratios of the medians, pool / hand-started (goal: <= 1.05).

usage: python bench/pool.py [--workers N] [--jobs M] [--rounds R]
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from dbdict_fs import create_jobs  # noqa: E402

EXPERIMENT = "def main(state, channel):\n    state.result = state.i * 2\n"
CLI = [sys.executable, "-m", "dbdict_fs.cli"]


def _cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(commands, env):
    """(wall seconds, CPU seconds of every process started) of running `commands` at once."""
    cpu, start = _cpu(), time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in commands]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"a run failed: exit codes {codes} of {commands}")
    return elapsed, _cpu() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.workers
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    base = tempfile.mkdtemp(prefix="dbdict-bench-pool-")
    pool_times, hand_times = [], []
    try:
        exp = os.path.join(base, "exp.py")
        with open(exp, "w") as f:
            f.write(EXPERIMENT)
        print(f"{args.jobs} trivial jobs, {n} workers, {os.cpu_count()} cores, {args.rounds} rounds")
        for r in range(args.rounds):
            trees = {}
            for kind in ("pool", "hand"):
                trees[kind] = os.path.join(base, f"{kind}{r}")
                create_jobs(trees[kind], [{"i": i} for i in range(args.jobs)], f"{exp}:main")
            order = ("pool", "hand") if r % 2 == 0 else ("hand", "pool")  # alternate who goes first
            for kind in order:
                if kind == "pool":
                    pool_times.append(timed_run([CLI + ["work", trees[kind], "--workers", str(n), "-q"]], env))
                else:
                    hand_times.append(timed_run([CLI + ["work", trees[kind], "-q"]] * n, env))
            (pw, pc), (hw, hc) = pool_times[-1], hand_times[-1]
            print(f"round {r + 1}: wall pool {pw:.2f} s, hand-started {hw:.2f} s ({pw / hw:.3f}); "
                  f"cpu pool {pc:.2f} s, hand-started {hc:.2f} s ({pc / hc:.3f})")
        for i, what in ((0, "wall"), (1, "cpu")):
            pool = statistics.median(t[i] for t in pool_times)
            hand = statistics.median(t[i] for t in hand_times)
            print(f"median {what}: pool {pool:.2f} s ({pool / args.jobs * 1000:.1f} ms/job), hand-started "
                  f"{hand:.2f} s ({hand / args.jobs * 1000:.1f} ms/job); ratio {pool / hand:.3f} (goal <= 1.05)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
