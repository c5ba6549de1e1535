"""Booking throughput (DESIGN.md 4), as ratios against a floor measured in the same run.

floor:    one process, a bare loop over the jobs: link a token to claim.1 + one atomic state
          write, with the same fsyncs as the real thing (booking.link_claim: token fsync;
          jobdir.atomic_write: file fsync + directory fsync), no reading, no judging.
(a) booking: N = 1, 4, 8 processes racing over one tree of trivial jobs, each doing what the
          work loop does minus the experiment: scan the tree once, shuffle, book down the
          queue with booking.claim() and commit with Claim.write_state() (+ removal of the
          older state). Bookings/s over the whole run (scans included), and its ratio to
          the floor. Every job must be booked exactly once.
    jobs: whole-job throughput of `dbdict work` with N worker processes on trivial jobs
          (each runs a real experiment child), next to one `python -c pass` spawn.
(b) scaling: one process books K jobs of a tree of 1k jobs and K of a tree of 20k jobs; the
          per-booking time (the queue, after the one scan) should not grow with the tree
          (goal: 20k/1k <= 1.2). The scan is reported separately, per job.

Trees live under /tmp and are removed afterwards.

usage: python bench/booking.py [--quick] [--jobs N] [--work-jobs N] [--big N] [--keep]
"""

import argparse
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from dbdict_fs import booking, create_jobs, runner  # noqa: E402
from dbdict_fs import jobdir as jd  # noqa: E402
from dbdict_fs.errors import NotRunnable  # noqa: E402

EXPERIMENT = "def main(state, channel):\n    state.result = state.i\n"
LEASE, HEARTBEAT = 600.0, 30.0


def make_tree(path, n, exp, procs=2):
    """A tree of n trivial jobs, created by `procs` processes at once (create is safe to race)."""
    chunks = [range(k, n, procs) for k in range(procs)]
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=create_jobs, args=(path, [{"i": i} for i in chunk], f"{exp}:main"))
               for chunk in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        if w.exitcode:
            raise SystemExit(f"creating {path} failed")
    return sorted(jd.iter_jobdirs(path))


def clone(template, path):
    shutil.copytree(template, path, symlinks=True)
    return sorted(jd.iter_jobdirs(path))


# ---------------------------------------------------------------- the floor

def floor(paths):
    """Seconds per booking of the bare loop: link claim + atomic state write."""
    token = booking.make_token(booking.Identity.current(), LEASE, HEARTBEAT, "bench")
    data = jd.dump_state({"i": 0, "dbdict": {"status": "done", "epoch": 1}})
    start = time.perf_counter()
    for path in paths:
        if not booking.link_claim(path, 1, token):
            raise SystemExit("floor: lost a race with nobody")
        jd.atomic_write(os.path.join(path, jd.state_name(1)), data)
    return (time.perf_counter() - start) / len(paths)


# ---------------------------------------------------------------- the booking loop

def book_down(tree, limit=None, candidates=None):
    """What `work` does minus the experiment. Returns (scan_s, book_s, won, lost)."""
    identity = booking.Identity.current()
    observer = booking.Observer(identity)
    t0 = time.monotonic()
    if candidates is None:
        candidates = runner.scan(tree)
        random.shuffle(candidates)
        candidates.sort(key=lambda c: -c[2])
    t1 = time.monotonic()
    won = lost = 0
    for path, _, _ in candidates:
        if limit is not None and won >= limit:
            break
        try:
            held = booking.claim(path, identity=identity, observer=observer, lease=LEASE,
                                 heartbeat=HEARTBEAT, wait=True)
        except NotRunnable:
            lost += 1
            continue
        state = held.state
        state["dbdict"].update(status="done", attempts=held.epoch, host=identity.host, pid=os.getpid())
        held.write_state(state)
        jd.remove_older_states(path, held.epoch)
        won += 1
    return t1 - t0, time.monotonic() - t1, won, lost


def _racer(tree, barrier, queue):
    barrier.wait()
    start = time.monotonic()
    scan_s, book_s, won, lost = book_down(tree)
    queue.put((start, time.monotonic(), scan_s, book_s, won, lost))


def race(tree, n_procs, n_jobs):
    """N processes book the whole tree at once. Returns (bookings/s, detail)."""
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(n_procs), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(tree, barrier, queue)) for _ in range(n_procs)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    wall = max(r[1] for r in results) - min(r[0] for r in results)
    won = sum(r[4] for r in results)
    if won != n_jobs:
        raise SystemExit(f"{n_procs} processes booked {won} of {n_jobs} jobs")
    for path in jd.iter_jobdirs(tree):
        listing = jd.list_job(path)
        if sorted(listing.claim_epochs) != [1]:
            raise SystemExit(f"{path}: claims {listing.claim_epochs}: a job was booked twice")
    return won / wall, {"wall": wall, "lost_races": sum(r[5] for r in results),
                        "scan_s": max(r[2] for r in results)}


# ---------------------------------------------------------------- whole jobs

def work_throughput(tree, n_workers, n_jobs):
    cli = [sys.executable, "-m", "dbdict_fs.cli", "work", tree, "-q"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    start = time.perf_counter()
    procs = [subprocess.Popen(cli, env=env) for _ in range(n_workers)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"dbdict work exited with {codes}")
    done = sum(1 for p in jd.iter_jobdirs(tree) if jd.read_latest_state(p)[1]["dbdict"]["status"] == "done")
    if done != n_jobs:
        raise SystemExit(f"{done} of {n_jobs} jobs done")
    return n_jobs / wall


def spawn_time(n=10):
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    return (time.perf_counter() - start) / n


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small trees (a run of ~half a minute)")
    parser.add_argument("--jobs", type=int, help="jobs per tree for (a) (default 1000; quick 300)")
    parser.add_argument("--work-jobs", type=int, help="jobs for `dbdict work` (default 120; quick 40)")
    parser.add_argument("--big", type=int, help="the large tree of (b) (default 20000; quick 4000)")
    parser.add_argument("--small", type=int, default=1000, help="the small tree of (b) (default 1000)")
    parser.add_argument("--keep", action="store_true", help="do not remove the trees")
    args = parser.parse_args()
    n_jobs = args.jobs or (300 if args.quick else 1000)
    n_work = args.work_jobs or (40 if args.quick else 120)
    big = args.big or (4000 if args.quick else 20000)
    small = args.small
    k = min(small, 1000) if not args.quick else min(small, 300)
    workers = (1, 4, 8)

    base = tempfile.mkdtemp(prefix="dbdict-bench-booking-", dir="/tmp")
    try:
        exp = os.path.join(base, "exp.py")
        with open(exp, "w") as f:
            f.write(EXPERIMENT)
        print(f"cpus: {os.cpu_count()}; trees under {base}")

        # (a) booking throughput against the floor
        template = os.path.join(base, "template")
        make_tree(template, n_jobs, exp)
        floors = [floor(clone(template, os.path.join(base, f"floor{r}"))) for r in range(2)]
        floor_s = sum(floors) / len(floors)  # measured twice: fsync times drift
        floor_rate = 1 / floor_s
        print(f"\n(a) booking, {n_jobs} trivial jobs per tree")
        print(f"  floor (1 process, link claim + atomic state write, 3 fsyncs): "
              f"{floor_rate:8.0f} bookings/s ({floor_s * 1e3:.2f} ms each; runs: "
              f"{', '.join(f'{1 / f:.0f}/s' for f in floors)})")
        for n in workers:
            tree = os.path.join(base, f"race{n}")
            clone(template, tree)
            rate, detail = race(tree, n, n_jobs)
            print(f"  {n} process{'es' if n > 1 else '  '} claim()+write_state():        {rate:8.0f} bookings/s "
                  f"= {rate / floor_rate:.2f}x the floor  (lost races {detail['lost_races']}, "
                  f"scan {detail['scan_s'] * 1e3:.0f} ms)")
            shutil.rmtree(tree, ignore_errors=True)

        spawn = spawn_time()
        print(f"\n    whole jobs: `dbdict work`, {n_work} trivial jobs (one python spawn: {spawn * 1e3:.0f} ms)")
        work_template = os.path.join(base, "work-template")
        make_tree(work_template, n_work, exp)
        for n in workers:
            tree = os.path.join(base, f"work{n}")
            clone(work_template, tree)
            rate = work_throughput(tree, n, n_work)
            print(f"  {n} worker{'s' if n > 1 else ' '}: {rate:6.1f} jobs/s ({1e3 / rate:5.1f} ms/job "
                  f"= {1 / rate / spawn:.2f}x a python spawn)")
            shutil.rmtree(tree, ignore_errors=True)

        # (b) per-booking time does not grow with the tree; the two trees are booked in
        # alternating chunks, so a drift of the disk's fsync time hits both alike
        print(f"\n(b) per booking, 1 process booking {k} jobs of a tree of {small} vs {big} jobs")
        queues, chunks, rounds = {}, {small: [], big: []}, 10
        for size in (small, big):
            tree = os.path.join(base, f"size{size}")
            t = time.perf_counter()
            make_tree(tree, size, exp)
            made = time.perf_counter() - t
            t = time.perf_counter()
            candidates = runner.scan(tree)
            scan_s = time.perf_counter() - t
            random.shuffle(candidates)
            queues[size] = candidates[:k]
            print(f"  {size:6d} jobs: created in {made:.1f} s; one scan {scan_s:.2f} s ({scan_s / size * 1e6:.0f} us/job)")
        for r in range(rounds):
            for size in ((small, big) if r % 2 == 0 else (big, small)):
                chunk = queues[size][r * k // rounds:(r + 1) * k // rounds]
                _, book_s, won, lost = book_down(None, candidates=chunk)
                assert won == len(chunk) and lost == 0, (won, lost)
                chunks[size].append(book_s / len(chunk))
        per = {size: statistics.median(chunks[size]) for size in chunks}
        for size in (small, big):
            print(f"  {size:6d} jobs: {per[size] * 1e3:.3f} ms/booking, median of {rounds} chunks "
                  f"(mean {statistics.mean(chunks[size]) * 1e3:.3f}; claim + write_state + remove older)")
        ratio = per[big] / per[small]
        print(f"  ratio {big}/{small}: {ratio:.2f} (goal <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'})")
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
