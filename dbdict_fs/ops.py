"""Operating a sweep: status, requeue, cancel, show and logs (DESIGN.md 7).

Every change is made under a claim, like a worker's (DESIGN.md 4): the command links
claim.<T+1>, re-reads the state it won, and writes state.<T+1>.yaml; a running worker is
fenced at its next heartbeat and its late writes are hidden.
"""

import copy
import json
import os
import sys
import time

from . import booking
from . import jobdir as jd
from . import trees
from .discovery import after_commit, mark_live
from .errors import DbdictError, ExitCode, NotRunnable, UsageError

CANCELABLE = ("ready", "booked", "running", "stale")
REQUEUEABLE = ("failed", "canceled", "stale", "done", "ready", "running", "booked", "pruned")
NEEDS_FORCE = ("done", "running", "booked")


# ---------------------------------------------------------------- changing jobs

def fresh_status(jobdir, listing, state, ask_slurm=False):
    """The job's status now, from fresh reads, decided by booking (the one place, DESIGN 4).

    Decisions use this, not the status a row was selected by: a holder may have claimed
    the job since, and a command's claim fences whoever holds the job.
    """
    top = listing.claim_epoch
    token = jd.read_claim(jobdir, top) if top else {}
    gone = booking.scheduler_gone([token.get("cluster_job")]) if ask_slurm and token.get("cluster_job") else ()
    return booking.derived_status(jobdir, top, state, token=token, gone=gone)


def change_job(jobdir, transform, purpose, ask_slurm=False):
    """Apply `transform(state, epoch, status) -> new state or None` under a new claim.
    Live markers and hints reach the job's tree as `trees.tree_of` decides it.

    The decision is taken twice: on the fresh status before claiming (so jobs that need no
    change cost no claim, and a live holder is not fenced by mistake), and again on the
    state read after winning (the compare-and-swap). True when a new state was written.
    """
    for attempt in range(5):
        listing, state = jd.read_latest_state(jobdir)
        status = fresh_status(jobdir, listing, state, ask_slurm)
        planned = transform(copy.deepcopy(state), None, status)
        if planned is None:
            return False
        # Making a job runnable: live markers first, so no final mark hides it (discovery.py).
        live = None if planned["dbdict"]["status"] in booking.FINAL else (lambda e: mark_live(jobdir, e))
        try:
            lease, heartbeat = booking.command_lease()  # a killed command blocks the job <= 30 s
            held = booking.claim(jobdir, force=True, purpose=purpose, wait=False,
                                 lease=lease, heartbeat=heartbeat, before_link=live)
            break
        except NotRunnable:  # a worker or another command claimed it meanwhile: look again
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    unchanged = (held.state["dbdict"]["epoch"] == state["dbdict"]["epoch"]
                 and held.state["dbdict"]["status"] == state["dbdict"]["status"])
    new = transform(copy.deepcopy(held.state), held.epoch, status if unchanged else None)
    if new is None:
        booking.give_back(held)
        return False
    if new["dbdict"]["status"] not in booking.FINAL and live is None:
        mark_live(jobdir, held.epoch)  # the decision changed after the claim: still before the state
    held.write_state(new)
    after_commit(jobdir, held.epoch, new)
    return True


def effective_status(state, derived):
    """The status a change decides on: the written one, or the derived one (stale, booked)
    judged on fresh reads while the written status still agrees with it."""
    status = state["dbdict"]["status"]
    if derived in ("stale", "booked") and status in ("running", "ready"):
        return derived
    return status


def requeue_transform(statuses, priority=None, fresh=False):
    """ready again, if the job's status is one of `statuses`. `fresh`: its next attempt
    starts in an empty workdir (runner honours dbdict.fresh_workdir, workdir.prepare_fresh)."""
    def transform(state, epoch, derived):
        if effective_status(state, derived) not in statuses:
            return None
        book = state["dbdict"]
        book.update(status="ready", error=None, returned=None)
        book.pop("pgid", None)
        if fresh:
            book["fresh_workdir"] = True
        if epoch is not None:
            book["requeue_epoch"] = epoch
        if priority is not None:
            book["priority"] = float(priority)
        return state
    return transform


def cancel_transform():
    def transform(state, epoch, derived):
        if effective_status(state, derived) not in CANCELABLE:
            return None
        state["dbdict"].update(status="canceled")
        state["dbdict"].pop("pgid", None)
        return state
    return transform


def _select(tree, filters=None, where=None, progress=False):
    from . import query

    # The index decides stale through booking, the scheduler-gone path included, so what
    # status counts, query shows and requeue/cancel select is the same for every job.
    rows = query.select(tree, filters=filters, where=where, progress=progress)
    for row in rows:
        # The index may have judged the holder's task gone by its claim's token (the state's
        # cluster_job names the writer, not the holder): change_job asks squeue again, for
        # the claim it sees, only where that claim's token names a task.
        if row.get("dbdict.status") == "stale":
            row["_slurm_gone"] = True
    return rows


def change_many(tree, transform_for, purpose, filters=None, where=None, dry_run=False, progress=False,
                on_change=None, check=None):
    """Apply a change to every selected job, each under its own claim. Returns
    {"selected": N, "changed": [{"path", "was"}], "errors": [message]}. `check(path)`,
    when given, may refuse a job (raising DbdictError) before anything is claimed."""
    tree = trees.resolve(tree)  # the command's tree: what trees.tree_of answers for its jobs
    rows = _select(tree, filters, where, progress)
    report = {"selected": len(rows), "changed": [], "errors": []}
    for row in rows:
        path, selected_as = row["dbdict.path"], row.get("dbdict.status")
        transform = transform_for(selected_as)
        if transform is None:
            continue
        try:
            if check is not None:
                check(path)
            if dry_run or change_job(path, transform, purpose, ask_slurm=bool(row.get("_slurm_gone"))):
                report["changed"].append({"path": path, "was": selected_as})
                if on_change:
                    on_change(path, selected_as)
        except DbdictError as exc:
            report["errors"].append(str(exc))
    return report


def requeue_statuses(status=None, force=False):
    """The statuses `requeue` takes: failed, canceled, stale by default (+ done with --force);
    done, running and booked only with force (running/booked: their live worker is fenced)."""
    given = status is not None
    if isinstance(status, str):
        status = [s.strip() for s in status.split(",") if s.strip()]
    statuses = tuple(status) if given else ("failed", "canceled", "stale")
    unknown = [s for s in statuses if s not in REQUEUEABLE]
    if unknown:
        raise UsageError(f"requeue --status: unknown status {unknown[0]!r} (one of {', '.join(REQUEUEABLE)})")
    if force and not given:
        statuses += ("done",)  # --force alone also requeues done jobs
    forced = [s for s in statuses if s in NEEDS_FORCE]
    if forced and not force:
        raise UsageError(f"requeue --status {forced[0]}: add --force to requeue {forced[0]} jobs")
    return statuses


def requeue(tree, filters=None, where=None, status=None, priority=None, force=False, dry_run=False,
            fresh=False, **kw):
    """Make selected jobs ready again (Python API of `dbdict requeue`); see change_many.
    `fresh`: each one's next attempt starts in an empty workdir, the old one kept beside it."""
    statuses = requeue_statuses(status, force)

    def transform_for(selected_as):
        return requeue_transform(statuses, priority, fresh) if selected_as in statuses else None

    return change_many(tree, transform_for, "requeue", filters, where, dry_run, check=check_runnable_files, **kw)


def check_runnable_files(jobdir):
    """Refuse to make runnable a job whose files a worker would refuse (a damaged or
    disagreeing config.yaml: the index reads only the state, so the job would show `ready`
    for ever while every worker skips it). The worker's own check, runner.check_job."""
    from .runner import check_job

    try:
        check_job(jobdir)
    except (jd.CorruptJob, jd.JobNotFound) as exc:
        raise jd.CorruptJob(getattr(exc, "path", jobdir), f"{getattr(exc, 'reason', exc)}; "
                            f"workers would skip it, so it is not requeued") from None


def cancel(tree, filters=None, where=None, dry_run=False, **kw):
    """Cancel selected ready, running and stale jobs (Python API of `dbdict cancel`)."""
    def transform_for(selected_as):
        return cancel_transform() if selected_as in CANCELABLE else None

    return change_many(tree, transform_for, "cancel", filters, where, dry_run, **kw)


def _print_changes(args, run, past, note=None):
    def said(path, was):
        if args.dry_run:
            print(f"would be {past}: {path} ({was}){note(path) if note else ''}")
        elif not args.quiet:
            print(f"{past}: {path} (was {was}){note(path) if note else ''}")

    report = run(on_change=said, progress=not args.quiet)
    for error in report["errors"]:
        print(f"Error: {error}", file=sys.stderr)
    what = "would change" if args.dry_run else past
    print(f"{what} {len(report['changed'])} of {report['selected']} selected jobs", file=sys.stderr)
    return ExitCode.USAGE if report["errors"] else ExitCode.OK


def cmd_requeue(args):
    statuses = requeue_statuses(args.status, args.force)  # usage errors before any scan
    fresh = getattr(args, "fresh", False)
    return _print_changes(args, lambda **kw: requeue(args.tree, args.filters, args.where, statuses, args.priority,
                                                     args.force, args.dry_run, fresh, **kw), "requeued",
                          _fresh_note if fresh else None)


def _fresh_note(jobdir):
    """What `requeue --fresh` says of a job: where its old workdir will stay."""
    from .workdir import committed_name, kept_name

    try:
        old = committed_name(jobdir, jd.read_latest_state(jobdir)[1])
    except (OSError, DbdictError):
        old = None
    if old is None:
        return ": its next attempt starts in an empty workdir"
    return (f": its next attempt starts in an empty workdir; the old one stays as "
            f"{os.path.join(jobdir, kept_name(old))}")


def cmd_cancel(args):
    return _print_changes(args, lambda **kw: cancel(args.tree, args.filters, args.where, args.dry_run, **kw),
                          "canceled")


# ---------------------------------------------------------------- status

def cmd_status(args):
    if not getattr(args, "watch", None):
        return _status_once(args)
    try:
        while True:
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")  # clear the screen between refreshes
            print(f"{booking.utc_iso()}  (every {args.watch:g}s, Ctrl-C to stop)")
            _status_once(args)
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def status(tree, filters=None, where=None, progress=False):
    """Counts per status and the running jobs (Python API of `dbdict status`):
    {"counts": {status: N}, "total": N, "running": [...], "failed": [{"path", "error"}]}."""
    rows = _select(tree, filters, where, progress)
    counts = {}
    for row in rows:
        st = row.get("dbdict.status") or "corrupt"
        counts[st] = counts.get(st, 0) + 1
    running = [_running_row(r) for r in rows if r.get("dbdict.status") in ("running", "stale", "booked")]
    failures = sorted((r for r in rows if r.get("dbdict.status") == "failed"),
                      key=lambda r: str(r.get("dbdict.end") or ""), reverse=True)[:5]
    report = {"counts": counts, "total": len(rows), "running": running,
              "failed": [{"path": r["dbdict.path"], "error": r.get("dbdict.error")} for r in failures]}
    from .pool import pool_records
    from .searches import summaries  # one listing when the tree has no search (DESIGN.md 11)

    report["pools"] = pool_records(tree)  # local worker pools (DESIGN.md 12)
    searches = summaries(tree, rows)
    if searches:
        report["searches"] = searches
    return report


def _status_once(args):
    report = status(args.tree, args.filters, args.where, progress=not getattr(args, "quiet", False))
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return 0
    counts, running = report["counts"], report["running"]
    order = ("ready", "booked", "running", "stale", "done", "failed", "canceled", "pruned", "corrupt")
    parts = [f"{counts[s]} {s}" for s in order if counts.get(s)]
    print(f"{report['total']} jobs: " + (", ".join(parts) if parts else "none"))
    if running:
        print("\nrunning:")
        for r in running:
            age = "?" if r["heartbeat_age"] is None else f"{r['heartbeat_age']:.0f}s"
            slurm_job = f"  slurm {r['cluster_job']}" if r.get("cluster_job") else ""
            late = "  (heartbeat overdue: its worker may be stopped or dead)" if r["heartbeat_overdue"] else ""
            print(f"  {r['status']:8} {r['path']}  host {r['host']} pid {r['pid']}{slurm_job}  "
                  f"attempt {r['run']}  heartbeat {age} ago{late}")
    if report["pools"]:
        from .pool import describe

        print("\nworker pools:")
        for pool in report["pools"]:
            print(describe(pool))
    from .searches import print_summaries

    print_summaries(report.get("searches"))
    if report["failed"]:
        print("\nrecent failures:")
        for r in report["failed"]:
            print(f"  {r['path']}: {r['error'] or '?'}")
    return 0


def _running_row(row):
    path = row["dbdict.path"]
    age, token, top = None, {}, 0
    try:
        listing = jd.list_job(path)
        top = listing.claim_epoch
        if top:
            token = jd.read_claim(path, top)
            age = booking.claim_age(path, top)
    except (OSError, DbdictError):
        pass
    overdue = booking.heartbeat_overdue(path, top, token) if token and row.get("dbdict.status") != "stale" else None
    return {"path": path, "status": row.get("dbdict.status"), "host": token.get("host", row.get("dbdict.host")),
            "pid": token.get("pid", row.get("dbdict.pid")), "cluster_job": token.get("cluster_job"),
            "attempts": row.get("dbdict.attempts"), "run": row.get("dbdict.runs"), "start": row.get("dbdict.start"),
            "heartbeat_age": None if age is None else round(age, 1), "heartbeat_overdue": overdue is not None}


# ---------------------------------------------------------------- show and logs

def _require_job(path):
    if not os.path.isdir(path):
        raise UsageError(f"{path}: no such directory")
    if not os.path.isfile(os.path.join(path, jd.CONFIG)):
        raise UsageError(f"{path}: not a job directory (no config.yaml)")


def attempt_history(jobdir):
    """One entry per claim: who took the job, when, and why (claims are never deleted)."""
    listing = jd.list_job(jobdir)
    out = []
    for epoch in sorted(listing.claim_epochs):
        try:
            token = jd.read_claim(jobdir, epoch)
        except OSError:
            token = {}
        out.append({"epoch": epoch, "purpose": token.get("purpose", "?"), "host": token.get("host"),
                    "pid": token.get("pid"), "time": token.get("time"), "cluster_job": token.get("cluster_job")})
    return out


def show(jobdir):
    """A job's config, latest state and claims (Python API of `dbdict show`)."""
    _require_job(jobdir)
    _, state = jd.read_latest_state(jobdir)
    return {"path": jobdir, "config": jd.read_config(jobdir), "state": state, "claims": attempt_history(jobdir)}


def cmd_show(args):
    data = show(args.jobdir)
    if args.format == "json":
        from .output import json_safe

        print(json.dumps(json_safe(data), indent=2, allow_nan=False))
        return 0
    state, history = data["state"], data["claims"]
    with open(os.path.join(args.jobdir, jd.CONFIG), encoding="utf-8", errors="replace") as f:
        print(f"# {args.jobdir}\n\n## config.yaml\n{f.read().rstrip()}")
    book = state["dbdict"]
    print(f"\n## state (epoch {book['epoch']})")
    print(f"attempt {book.get('runs') or 0} ran last (`logs --attempt N` shows attempt N); "
          f"{book.get('attempts') or 0} since the last requeue, which --max-attempts counts")
    print(json.dumps(state, indent=2, ensure_ascii=False))
    print("\n## claims")
    if not history:
        print("  (never booked)")
    for h in history:
        extra = f" cluster job {h['cluster_job']}" if h.get("cluster_job") else ""
        print(f"  {jd.claim_name(h['epoch'])}: {h['purpose']:8} {h['host']} pid {h['pid']} at {h['time']}{extra}")
    return 0


def split_attempts(text):
    """Split a stdout/stderr file into attempts at their header lines."""
    attempts, current = [], None
    for line in text.splitlines(keepends=True):
        if line.startswith(jd.ATTEMPT_HEADER):
            current = [line]
            attempts.append(current)
        elif current is None:
            current = [line]
            attempts.append(current)
        else:
            current.append(line)
    return ["".join(a) for a in attempts]


def cmd_logs(args):
    _require_job(args.jobdir)
    path = os.path.join(args.jobdir, jd.STDERR if args.stderr else jd.STDOUT)
    try:
        fd, _ = jd.open_regular(path)  # a FIFO planted as stdout must not hang `logs`
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    with os.fdopen(fd, "rb") as f:
        os.set_blocking(fd, True)
        text = f.read().decode("utf-8", errors="replace")
        if args.attempt is not None:
            parts = split_attempts(text)
            if args.attempt > len(parts):
                raise UsageError(f"{args.jobdir}: there are {len(parts)} attempts in {os.path.basename(path)}, "
                                 f"not {args.attempt}")
            text = parts[args.attempt - 1]
        sys.stdout.write(text)
        sys.stdout.flush()
        if not args.follow:
            return 0
        while True:
            chunk = f.read()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
                continue
            try:
                _, state = jd.read_latest_state(args.jobdir)
            except DbdictError:
                state = {"dbdict": {"status": "running"}}
            if state["dbdict"]["status"] != "running":
                return 0
            time.sleep(0.5)
