"""What the scheduler (SLURM's squeue) says of cluster jobs: one batched call per question.

Booking's scheduler-gone fast path (DESIGN 4) and `dbdict status` ask here; writing and
submitting sbatch scripts is `slurm`'s. subprocess and shutil are imported where used.
"""

# squeue states in which the processes of a job may still be alive. Anything else (PENDING
# after a requeue, a final state, or not listed at all) means the run that booked is over.
ALIVE_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING",
                          "STAGE_OUT", "RESIZING", "POWER_UP_NODE"})


def _squeue(ids, squeue, timeout):
    """One `squeue -h -j IDS -o "%i %T"` call: its CompletedProcess, or None when squeue is
    missing or did not answer in time."""
    import shutil
    import subprocess

    if shutil.which(squeue) is None:
        return None
    try:
        return subprocess.run([squeue, "-h", "-j", ",".join(ids), "-o", "%i %T"], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None


def tasks_running(jobs, squeue="squeue", timeout=15):
    """{job id: number of its tasks in a live state} in one squeue call, or None."""
    proc = _squeue(jobs, squeue, timeout)
    if proc is None:
        return None
    if proc.returncode != 0 and "invalid job id" not in proc.stderr.lower():
        return None
    out = {j: 0 for j in jobs}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].upper() in ALIVE_STATES:
            job = parts[0].split("_", 1)[0]
            if job in out:
                out[job] += 1
    return out


def jobs_gone(cluster_jobs, squeue="squeue", timeout=15):
    """{cluster_job: True (gone) | False (may still run) | None (cannot tell)} in one squeue call.

    Gone means squeue does not list it in a state where its processes may live: finished,
    purged, unknown, or PENDING again (requeued: the run that booked the job is over).
    """
    ids = sorted({str(j) for j in cluster_jobs if j})
    result = {j: None for j in ids}
    proc = _squeue(ids, squeue, timeout) if ids else None
    if proc is None:
        return result
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():
            if len(ids) == 1:
                return {ids[0]: True}
            return {j: job_gone(j, squeue, timeout) for j in ids}
        return result  # controller down, bad config, ...: do not guess
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            states.setdefault(parts[0], set()).add(parts[1].upper())
    return {j: not (states.get(j, set()) & ALIVE_STATES) for j in ids}


def job_gone(cluster_job, squeue="squeue", timeout=15):
    """True when the SLURM job `cluster_job` ("123" or "123_4") no longer runs; False when it
    may; None when squeue is missing or does not answer."""
    if not cluster_job:
        return None
    return jobs_gone([cluster_job], squeue, timeout)[str(cluster_job)]
