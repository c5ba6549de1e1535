"""Finished jobs written straight in the design's format (DESIGN.md 1-3, 10, 11), without
running them: for the report's tests and benches, which need many jobs, or the bookkeeping
of a search (`search`, `trial`, status `pruned`) that another part of the code writes."""

import hashlib
import json
import os


def write_job(tree, config, results, *, status="done", book=None, history=(), error=None):
    """One job directory: config.yaml, state.1.yaml (+ the state.yaml link), claim.1 and
    history.1.jsonl from `history` ([{"step": s, metric: value, ...}, ...]). Returns its path."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    job = os.path.join(tree, digest[:2], digest)
    os.makedirs(os.path.join(job, "workdir"))
    head = {"experiment": "mypkg.train:main", "hash": digest, "created": "2026-11-24T10:00:00Z"}
    with open(os.path.join(job, "config.yaml"), "w") as f:
        f.write(json.dumps(dict(config, dbdict=head), indent=2) + "\n")
    lines = "".join(json.dumps(point) + "\n" for point in history)
    with open(os.path.join(job, "history.1.jsonl"), "w") as f:
        f.write(lines)
    state = dict(config, **results)
    state["dbdict"] = dict(head, status=status, priority=1.0, epoch=1, requeue_epoch=0, attempts=1,
                           host="node1", pid=1234, start="2026-11-24T10:00:01Z", end="2026-11-24T10:05:00Z",
                           duration=299.0, error=error, history={"epoch": 1, "bytes": len(lines.encode())},
                           **(book or {}))
    with open(os.path.join(job, "state.1.yaml"), "w") as f:
        f.write(json.dumps(state, indent=2) + "\n")
    os.symlink("state.1.yaml", os.path.join(job, "state.yaml"))
    with open(os.path.join(job, "claim.1"), "w") as f:
        json.dump({"host": "node17", "pid": 1234, "lease": 600.0, "heartbeat": 30.0}, f)
    for name in ("stdout", "stderr"):
        open(os.path.join(job, name), "w").close()
    return job
