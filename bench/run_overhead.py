"""Per-job overhead of creating and running trivial jobs, as ratios against a baseline.

The baseline is measured in the same run: spawning `python -c pass` (what a job costs
at the least, since every experiment runs in a fresh Python process). Prints:
  create: seconds per job, and the ratio to one atomic file write + rename
  run:    seconds per job with `dbdict-run-job run DIR` and with one `dbdict work`,
          each as a ratio to the `python -c pass` spawn.

usage: python bench/run_overhead.py [--jobs N]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from dbdict_fs import create_jobs  # noqa: E402
from dbdict_fs.jobdir import atomic_write  # noqa: E402

EXPERIMENT = "def main(state, channel):\n    state.result = state.i * 2\n"


def timed(func):
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    args = parser.parse_args()
    n = args.jobs
    base = tempfile.mkdtemp(prefix="dbdict-bench-")
    try:
        exp = os.path.join(base, "exp.py")
        with open(exp, "w") as f:
            f.write(EXPERIMENT)
        # baselines
        spawn = timed(lambda: [subprocess.run([sys.executable, "-c", "pass"], check=True) for _ in range(n)]) / n
        os.mkdir(os.path.join(base, "writes"))
        write = timed(lambda: [atomic_write(os.path.join(base, "writes", f"f{i}"), b"x" * 400) for i in range(n)]) / n
        # create
        tree = os.path.join(base, "tree")
        create = timed(lambda: create_jobs(tree, [{"i": i} for i in range(n)], f"{exp}:main")) / n
        jobs = sorted(os.path.join(tree, a, b) for a in os.listdir(tree) if not a.startswith(".")
                      for b in os.listdir(os.path.join(tree, a)))
        cli = [sys.executable, "-m", "dbdict_fs.cli"]
        run_one = timed(lambda: [subprocess.run(cli + ["run", j, "-q"], check=True) for j in jobs]) / n
        tree2 = os.path.join(base, "tree2")
        create_jobs(tree2, [{"i": i} for i in range(n)], f"{exp}:main")
        work = timed(lambda: subprocess.run(cli + ["work", tree2, "-q"], check=True)) / n
        print(f"jobs: {n}")
        print(f"baseline: python -c pass spawn {spawn * 1000:.1f} ms; atomic file write {write * 1000:.2f} ms")
        print(f"create: {create * 1000:.2f} ms/job = {create / write:.1f}x an atomic write")
        print(f"run (one `dbdict run` per job): {run_one * 1000:.1f} ms/job = {run_one / spawn:.2f}x a python spawn")
        print(f"work (one worker for all jobs): {work * 1000:.1f} ms/job = {work / spawn:.2f}x a python spawn")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
