"""Per-job overhead of creating and running trivial jobs, as ratios against a baseline.

The baseline is measured in the same run: spawning `python -c pass` (what a job costs at
the least when every experiment runs in a fresh Python process). Prints, side by side:
  create:  seconds per job, and the ratio to one atomic file write + rename
  work:    seconds per job with one `dbdict work` for all jobs, as a ratio to the spawn
           (goal <= 2.0x; 8.0x when each attempt started three interpreters, issue 25)
  fresh:   the same with --fresh-interpreter (each experiment in a new interpreter instead
           of a fork of the worker's zygote): what `work` cost before stop 19, no goal
  run:     seconds per job with one `dbdict run DIR` per job, as a ratio to the spawn
           (goal <= 3.0x); `runfresh` the same with --fresh-interpreter (no goal)
Commands start as the installed `dbdict` script does (`python -c "from dbdict_fs.cli import
main ..."`), not through `python -m` (runpy: ~4 ms more per command).
  preload: seconds per job of `dbdict work --preload slowmod` where every experiment
           imports `slowmod`, which takes 0.4 s to import, against the same `dbdict work`
           without --preload (goal <= 0.15x); the zygote's one import is included.
Each figure is the best of --repeat runs (the machine may be shared: the best run is the
one least disturbed by others), as wall time and as CPU time (user + system of every
process, which a loaded machine disturbs far less than wall time). The package's bytecode
is compiled first, as an installed package has it (PYTHONDONTWRITEBYTECODE would otherwise
make every experiment compile it). `--package DIR` measures another checkout of the project
(e.g. `git archive` of an older commit): its --preload row only if it has one.

usage: python bench/run_overhead.py [--jobs N] [--preload-jobs N] [--repeat R] [--package DIR]
"""

import argparse
import compileall
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if "--package" in sys.argv[:-1]:
    ROOT = os.path.abspath(sys.argv[sys.argv.index("--package") + 1])
sys.path.insert(0, ROOT)

from dbdict_fs import create_jobs  # noqa: E402
from dbdict_fs.jobdir import atomic_write  # noqa: E402

EXPERIMENT = "def main(state, channel):\n    state.result = state.i * 2\n"
SLOW_MODULE = "import time\ntime.sleep(0.4)  # a heavy import (torch takes seconds)\nVALUE = 1\n"
SLOW_EXPERIMENT = "def main(state, channel):\n    import slowmod\n    state.result = state.i * slowmod.VALUE\n"
GOALS = {"work": 2.0, "run": 3.0, "preload": 0.15}


def _cpu():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(func):
    """(wall seconds, cpu seconds of this process and the children it waited for)."""
    start, cpu = time.perf_counter(), _cpu()
    func()
    return Cost(time.perf_counter() - start, _cpu() - cpu)


class Cost:
    def __init__(self, wall, cpu):
        self.wall, self.cpu = wall, cpu

    def __truediv__(self, other):
        if isinstance(other, Cost):
            return Cost(self.wall / other.wall, self.cpu / other.cpu)
        return Cost(self.wall / other, self.cpu / other)


def best(measure, repeat):
    costs = [measure() for _ in range(repeat)]
    return Cost(min(c.wall for c in costs), min(c.cpu for c in costs))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--preload-jobs", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--package", metavar="DIR", help="the checkout to measure (default: this one)")
    args = parser.parse_args()
    n, m = args.jobs, args.preload_jobs
    compileall.compile_dir(os.path.join(ROOT, "dbdict_fs"), quiet=1)
    base = tempfile.mkdtemp(prefix="dbdict-bench-")
    counter = [0]

    def fresh_tree(count, spec):
        counter[0] += 1
        tree = os.path.join(base, f"tree{counter[0]}")
        create_jobs(tree, [{"i": i} for i in range(count)], spec)
        return tree

    def jobs_of(tree):
        return sorted(os.path.join(tree, a, b) for a in os.listdir(tree) if not a.startswith(".")
                      for b in os.listdir(os.path.join(tree, a)))

    try:
        exp = os.path.join(base, "exp.py")
        with open(exp, "w") as f:
            f.write(EXPERIMENT)
        with open(os.path.join(base, "slowmod.py"), "w") as f:
            f.write(SLOW_MODULE)
        slow = os.path.join(base, "slow.py")
        with open(slow, "w") as f:
            f.write(SLOW_EXPERIMENT)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, base, os.environ.get("PYTHONPATH")) if p))
        # What the installed `dbdict` script runs (pip's console script: no runpy, unlike -m)
        cli = [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main())"]

        r = args.repeat
        spawn = best(lambda: timed(lambda: [subprocess.run([sys.executable, "-c", "pass"], check=True)
                                           for _ in range(n)]) / n, r)
        os.makedirs(os.path.join(base, "writes"))
        write = best(lambda: timed(lambda: [atomic_write(os.path.join(base, "writes", f"f{i}"), b"x" * 400)
                                            for i in range(n)]) / n, r)
        create = best(lambda: timed(lambda: fresh_tree(n, f"{exp}:main")) / n, r)

        def work_once(count, spec, extra=()):
            tree = fresh_tree(count, spec)
            return timed(lambda: subprocess.run(cli + ["work", tree, "-q", *extra], check=True, env=env)) / count

        def run_once(extra=()):
            jobs = jobs_of(fresh_tree(n, f"{exp}:main"))
            return timed(lambda: [subprocess.run(cli + ["run", j, "-q", *extra], check=True, env=env)
                                  for j in jobs]) / n

        work = best(lambda: work_once(n, f"{exp}:main"), r)
        run_one = best(run_once, r)
        rows = [("work", "one `dbdict work` for all jobs", work, work / spawn, "a python spawn")]
        with open(os.path.join(ROOT, "dbdict_fs", "options.py")) as f:
            if "fresh_interpreter" in f.read():
                fresh = best(lambda: work_once(n, f"{exp}:main", ["--fresh-interpreter"]), r)
                rows.append(("fresh", "work --fresh-interpreter", fresh, fresh / spawn, "a python spawn"))
        rows.append(("run", "one `dbdict run` per job", run_one, run_one / spawn, "a python spawn"))
        if "fresh" in {r[0] for r in rows}:
            run_fresh = best(lambda: run_once(["--fresh-interpreter"]), r)
            rows.append(("runfresh", "run --fresh-interpreter", run_fresh, run_fresh / spawn, "a python spawn"))
        if os.path.exists(os.path.join(ROOT, "dbdict_fs", "zygote.py")):
            without = best(lambda: work_once(m, f"{slow}:main"), r)
            with_preload = best(lambda: work_once(m, f"{slow}:main", ["--preload", "slowmod"]), r)
            rows.append(("preload", "work --preload of a 0.4 s import", with_preload, with_preload / without,
                         f"without ({without.wall * 1000:.0f} ms/job)"))
        load = os.getloadavg()[0]
        print(f"{ROOT}: jobs {n} (preload {m}); best of {r}; load average {load:.2f} on {os.cpu_count()} cores")
        print(f"baseline: python -c pass spawn {spawn.wall * 1000:.1f} ms (cpu {spawn.cpu * 1000:.1f} ms); "
              f"atomic file write {write.wall * 1000:.2f} ms")
        print(f"create:  {create.wall * 1000:7.1f} ms/job = {create.wall / write.wall:5.2f}x an atomic write")
        for name, what, per_job, ratio, against in rows:
            goal = GOALS.get(name)
            verdict = "" if goal is None else f"goal <= {goal}x: {'ok' if ratio.wall <= goal else 'over'}  "
            print(f"{name + ':':9}{per_job.wall * 1000:7.1f} ms/job = {ratio.wall:5.2f}x {against} "
                  f"(cpu {per_job.cpu * 1000:5.1f} ms = {ratio.cpu:5.2f}x)  {verdict}[{what}]")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
