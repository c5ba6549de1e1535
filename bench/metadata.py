"""Metadata cost of discovery and booking, counted on the counting FUSE filesystem (issue 13).

    python bench/metadata.py                     # N = 1k, 10k, 100k; W = 1, 8, 32
    python bench/metadata.py --sizes 1000,10000 --workers 1,8

Every number is a count of operations the file server saw (tests/fsim, one mount = one NFS
client with a 1 s attribute cache), or of system calls naming a tree path (strace, as the
issue measured): never a time, so the numbers are the same on a busy machine. Trees are
written on local disk under /tmp (N-W of them finished and marked, as workers leave them)
and removed afterwards. Needs fusepy + libfuse2 + fuse3 and strace (`make install` and
.ci/run provide them).
"""

import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests"), os.path.join(HERE, "..")]

import fsim  # noqa: E402
from fsim import measure  # noqa: E402

MDS_BUDGET = 50_000  # metadata operations/s a Lustre MDS serves for everyone
PAPER_WORKERS, PAPER_JOBS = 1000, 1_000_000


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--workers", default="1,8,32")
    p.add_argument("--sweep-jobs", type=int, default=48, help="jobs run to the end per sweep measurement")
    a = p.parse_args(argv)
    reason = fsim.available()
    if reason:
        sys.exit(f"bench/metadata.py: the counting filesystem is unavailable: {reason}")
    sizes = [int(x) for x in a.sizes.split(",")]
    workers = [int(x) for x in a.workers.split(",")]
    base = tempfile.mkdtemp(prefix="dbdict-bench-meta-")
    rows = []
    try:
        for n in sizes:
            tree = os.path.join(base, f"t{n}")
            ready = sum(workers) + 1 + a.sweep_jobs
            print(f"[N={n}] writing {n} jobs ({ready} ready, the rest finished) ...", file=sys.stderr, flush=True)
            measure.make_tree(tree, ready, n - ready)
            r = {"N": n}
            r["booking_calls"], r["first_write_calls"] = measure.booking_syscalls(tree)
            with fsim.Host(base, attr_timeout=1.0) as host:
                for w in workers:  # each worker is stopped at its first state write, then killed
                    r[f"start_W{w}"] = measure.start_to_first_write([host], os.path.basename(tree), w)
            before = measure.count_bookings(tree)
            with fsim.Host(base, attr_timeout=1.0) as a_, fsim.Host(base, attr_timeout=1.0) as b_:
                ops, meta = measure.sweep([a_, b_], os.path.basename(tree), workers=4, jobs_each=10 ** 6)
            runs = max(measure.count_bookings(tree) - before, 1)
            r["per_booking"], r["meta_per_booking"], r["sweep_runs"] = ops / runs, meta / runs, runs
            r["wait_pass"] = _waiting(base, tree)
            rows.append(r)
            shutil.rmtree(tree, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report(rows, workers)


def _waiting(base, tree):
    """Ops per steady pass of a --wait worker whose jobs are all held elsewhere: two live
    holders on another mount (two jobs added to the finished tree), every other job finished."""
    import signal
    import subprocess
    import time

    from dbdict_fs import jobdir as jd

    held, _ = measure.make_tree(tree, 2, 0, name="sleeper", sleep=600)
    with fsim.Host(base, attr_timeout=1.0) as a, fsim.Host(base, attr_timeout=1.0) as b:
        holders = [subprocess.Popen([sys.executable, "-c", "import sys; from dbdict_fs.cli import main; "
                                     "sys.exit(main(sys.argv[1:]))", "run", b.path(os.path.relpath(j, base)),
                                     "--lease", "60", "--heartbeat", "2"], env=measure.env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for j in held]
        try:
            for j in held:
                deadline = time.monotonic() + 120
                while jd.read_latest_state(j)[1]["dbdict"]["status"] != "running":
                    if time.monotonic() > deadline:
                        raise RuntimeError("a holder did not start")
                    time.sleep(0.05)
            ops2, _ = measure.waiting_worker(a, os.path.basename(tree), passes=2)
            ops8, _ = measure.waiting_worker(a, os.path.basename(tree), passes=8)
        finally:
            for p in holders:
                p.send_signal(signal.SIGTERM)
            for p in holders:
                p.wait(timeout=60)
    return (ops8 - ops2) / 6


def report(rows, workers):
    first = rows[0]
    print()
    print("Metadata operations (counted: server ops on the counting FUSE mount; strace calls where said)")
    head = ["what"] + [f"N={r['N']:,}" for r in rows] + [f"{rows[-1]['N'] // 1000}k/{first['N'] // 1000}k"]
    lines = [("one booking, config.yaml open -> first state write (strace tree calls)", "booking_calls"),
             ("worker start -> first state write (strace tree calls)", "first_write_calls")]
    lines += [(f"worker start -> first state write, cold mount, W={w} (server ops per worker)", f"start_W{w}")
              for w in workers]
    lines += [("--wait worker, all jobs held elsewhere: server ops per pass", "wait_pass"),
              ("4 workers on 2 hosts, sweep to the end: server ops per booking (run + commit incl.)", "per_booking"),
              ("  the same, metadata ops only (no read/write: file data goes to object servers)", "meta_per_booking")]
    width = max(len(t) for t, _ in lines)
    print(f"| {'what':{width}} | " + " | ".join(f"{h:>9}" for h in head[1:]) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * 11 for _ in head[1:]) + "|")
    for title, key in lines:
        vals = [r[key] for r in rows]
        ratio = vals[-1] / vals[0] if vals[0] else float("nan")
        print(f"| {title:{width}} | " + " | ".join(f"{v:>9.1f}" for v in vals) + f" | {ratio:>9.2f} |")
    last = rows[-1]
    print()
    print(f"Paper scale: {PAPER_WORKERS:,} workers x {PAPER_JOBS:,} jobs at 1 booking per worker per second, "
          f"against a {MDS_BUDGET:,} ops/s MDS (goal <= 20%), from the N={last['N']:,} counts:")
    for what, per in (("the booking alone (strace tree calls)", last["booking_calls"]),
                      ("discovery + booking, worker start to first write (strace)", last["first_write_calls"]),
                      ("a whole attempt, metadata ops (run, heartbeats, commit, marks)", last["meta_per_booking"]),
                      ("a whole attempt, every server op (data reads/writes too)", last["per_booking"])):
        rate = PAPER_WORKERS * per
        print(f"  {what:64} {per:7.1f} per booking = {rate:>9,.0f} ops/s = {100 * rate / MDS_BUDGET:4.0f}%")


if __name__ == "__main__":
    main()
