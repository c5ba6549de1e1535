"""Metadata costs of real dbdict processes, counted (tests/test_metadata.py, bench/metadata.py).

Every number is a count of operations the file server saw on a counting mount (countfs), or
of system calls naming a tree path (strace, the issue's own measure): never a time.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import meta_ops, tree_ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPS = os.path.join(ROOT, "tests", "experiments", "exps.py")


def env(**extra):
    out = dict(os.environ, DBDICT_CACHE_DIR=tempfile.mkdtemp(prefix="dbdict-cache-"))
    out["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, out.get("PYTHONPATH")) if p)
    out.update({k: str(v) for k, v in extra.items()})
    return out


def make_tree(tree, n_ready, n_done=0, name="double", **keys):
    """`n_ready` jobs as `create` leaves them and `n_done` finished ones, as workers leave
    them (claim.1, state.1.yaml `done`, final marks), written on local disk."""
    from dbdict_fs import booking
    from dbdict_fs.create import create_jobs
    from dbdict_fs.discovery import mark_final

    spec = f"{EXPS}:{name}"
    created = create_jobs(tree, [dict(i=i, x=i, **keys) for i in range(n_ready + n_done)], spec).created
    done = created[n_ready:]
    for job in done:
        held = booking.claim(job, lease=60, heartbeat=5)
        state = held.state
        state["dbdict"].update(status="done", runs=1, attempts=1)
        held.write_state(state)
        mark_final(job, held.epoch)
    if done:
        from dbdict_fs.discovery import Discovery

        for _ in Discovery(tree).walk():  # what the workers' walks leave: all-final directories marked
            pass
    return created[:n_ready], done


def _stopped(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def worker_cmd(tree, *args):
    return [sys.executable, "-c", "import sys; from dbdict_fs.cli import main; sys.exit(main(sys.argv[1:]))",
            "work", tree, "--quiet", *args]


def start_to_first_write(hosts, tree_rel, workers=1, timeout=120):
    """Start `workers` workers at once (spread over `hosts`) and stop each at its first
    state write (the DBDICT_TEST_STOP_AFTER_START seam). Returns the server ops of all hosts
    per worker, from start to those first writes."""
    for h in hosts:
        h.reset()
    procs = []
    e = env(DBDICT_TEST_STOP_AFTER_START=1)
    for k in range(workers):
        h = hosts[k % len(hosts)]
        procs.append(subprocess.Popen(worker_cmd(h.path(tree_rel), "--max-jobs", "1"), env=e,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + timeout
    try:
        while not all(_stopped(p.pid) or p.poll() is not None for p in procs):
            if time.monotonic() > deadline:
                raise AssertionError("workers did not reach their first state write")
            time.sleep(0.01)
        total = sum(tree_ops(h.counts()) for h in hosts)
    finally:
        for p in procs:
            _kill_tree(p)
    return total / workers


def _kill_tree(proc):
    """Kill a stopped worker and the attempt it started (its shepherd ends the experiment)."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def sweep(hosts, tree_rel, workers, jobs_each, timeout=600):
    """Run `workers` workers (spread over `hosts`), each booking up to `jobs_each` jobs to
    the end. Returns (server ops of all hosts, those a metadata server sees)."""
    for h in hosts:
        h.reset()
    e = env()
    procs = [subprocess.Popen(worker_cmd(hosts[k % len(hosts)].path(tree_rel), "--max-jobs", str(jobs_each)),
                              env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for k in range(workers)]
    for p in procs:
        p.wait(timeout=timeout)
    counts = [h.counts() for h in hosts]
    return sum(tree_ops(c) for c in counts), sum(meta_ops(c) for c in counts)


def count_bookings(backing_tree):
    """Run claims in a tree (command claims excluded), read from the backing directory."""
    n = 0
    for top, dirs, files in os.walk(backing_tree):
        for f in files:
            if f.startswith("claim."):
                n += 1
    return n


def waiting_worker(host, tree_rel, passes):
    """Server ops of one `--wait` worker over `passes` passes (DBDICT_TEST_MAX_PASSES); it
    polls every heartbeat (1 s here) at most."""
    host.reset()
    e = env(DBDICT_TEST_MAX_PASSES=passes)
    proc = subprocess.run(worker_cmd(host.path(tree_rel), "--wait", "--heartbeat", "1", "--lease", "60"), env=e,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    return tree_ops(host.counts()), proc


def booking_syscalls(tree):
    """(booking, start-to-first-write) tree-path system calls of one worker, by strace: from
    the open of config.yaml to the rename of its first state file, as issue 13 measured."""
    if not shutil.which("strace"):
        raise RuntimeError("strace is not installed (apt-get install strace)")
    out = tempfile.mktemp(prefix="dbdict-trace-")
    try:
        subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file,%desc", "-o", out]
                       + worker_cmd(tree, "--max-jobs", "1"), env=env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        lines = [line for line in open(out, errors="replace").read().splitlines() if tree in line]
    finally:
        if os.path.exists(out):
            os.unlink(out)
    start = next(i for i, line in enumerate(lines) if "config.yaml" in line and "open" in line)
    # The rename's first half is always on its line, even when strace splits a call that
    # another process interrupted ("<unfinished ...>").
    end = next(i for i, line in enumerate(lines) if re.search(r'rename\("[^"]*/\.tmp\.state\.\d+\.yaml\.', line))
    return end - start + 1, end + 1
