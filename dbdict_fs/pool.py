"""Local worker pools: `dbdict work TREE --workers N [--gpus LIST|all] [--gpus-per-worker K]`
(DESIGN.md 12).

The pool is a supervisor, not a second kind of worker. Each of its workers is a plain
`dbdict work` process started with the user's own arguments, the pool's three options taken
off, so filters, `--wait` and every attempt option mean for each worker exactly what they mean
for one; booking (DESIGN.md 4) is all that keeps the workers apart, as on a cluster.

* **Signals.** Workers run in process groups of their own, so a terminal's Ctrl-C reaches the
  pool alone, and the pool forwards each stop signal once to every worker: SIGINT, SIGTERM,
  SIGUSR1 and SIGUSR2 as they are, SIGHUP as SIGTERM (one worker stops the same way on each).
  A second SIGINT/SIGTERM is forwarded too, and kills the experiments at once, as it does for
  one worker. The pool then waits for its workers (each bounded by `--grace`) and exits 3.
  Workers get SIGTERM when the pool dies (PR_SET_PDEATHSIG), so even a pool killed -9 stops
  them the clean way.
* **Deaths.** A worker killed by a signal the pool did not forward (kill -9, the OOM killer)
  is replaced, at most MAX_REPLACEMENTS times per worker, once its attempt's processes are
  gone: the pool is a child subreaper, so the dead worker's shepherd becomes the pool's child,
  and when it has ended the replacement (on this host) finds the job's holder and experiment
  gone and takes it over at once by the same-host fast path. Nothing else is replaced: a
  worker that exits, whatever its code, meant to.
* **Record.** `TREE/.dbdict/pools/<host>-<pid>.json`, rewritten (atomically) whenever a worker
  starts or ends and removed when the pool exits, is what `dbdict status` shows (`pool_records`).
* **Output.** One progress line (done, running, failed, workers) instead of N logs: done and
  failed are counted from the outcome lines `dbdict work` writes to each worker's log
  (`TREE/.dbdict/workers/<host>-<pid>.log`), running from the workers that have an attempt
  (a child process) now.
"""

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

from . import booking
from . import jobdir as jd
from . import procs
from .errors import ExitCode, UsageError

POOL_OPTIONS = ("--workers", "--gpus", "--gpus-per-worker")
# what the pool forwards for each signal it receives (SIGHUP: a worker's stop signal is SIGTERM)
FORWARD = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM,
           signal.SIGUSR1: signal.SIGUSR1, signal.SIGUSR2: signal.SIGUSR2}
MAX_REPLACEMENTS = 3  # per worker: a job that kills its worker every time cannot loop forever
ORPHAN_WAIT = 30.0  # s a replacement waits for a dead worker's attempt to end (then starts anyway)
WORKERS_DIR = os.path.join(jd.META_DIR, "workers")
POOLS_DIR = os.path.join(jd.META_DIR, "pools")
_OUTCOME = re.compile(rb"^(done|failed|ready|lost|error) +\S")  # cmd_work's line: f"{status:8} {jobdir}"
_GPU_NAME = re.compile(r"^([0-9]+|(GPU|MIG)-[A-Za-z0-9/_-]+)$")


# ---------------------------------------------------------------- which devices, which workers

def available_gpus():
    """The devices this process may hand out, or None when nothing says.

    CUDA_VISIBLE_DEVICES first: where it is set (by SLURM inside a GPU allocation, or by the
    user) it is the restriction the environment imposes, and its names are what a child must
    be given; else the indices and UUIDs of `nvidia-smi -L` (env DBDICT_NVIDIA_SMI names
    another program). Returns (names, where), names being every accepted name.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        return [d.strip() for d in visible.split(",") if d.strip()], "CUDA_VISIBLE_DEVICES"
    try:
        proc = subprocess.run([os.environ.get("DBDICT_NVIDIA_SMI") or "nvidia-smi", "-L"], capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    if proc.returncode != 0:
        return None, None
    found = re.findall(r"^GPU (\d+):.*?(?:\(UUID: ([^)\s]+)\))?\s*$", proc.stdout, re.M)
    if not found:
        return None, None
    return [i for i, _ in found] + [u for _, u in found if u], "nvidia-smi -L"


def plan_workers(workers=None, gpus=None, gpus_per_worker=None):
    """The device list of each worker (None: the pool does not set CUDA_VISIBLE_DEVICES).

    With `gpus` (a comma list or "all"), the devices are cut into groups of
    `gpus_per_worker` (default 1); N defaults to the number of groups, and with more workers
    than groups the groups are shared in turn. Bad input raises a one-line UsageError.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UsageError(f"--workers must be a whole number >= 1, not {workers!r}")
    if gpus is None:
        if gpus_per_worker is not None:
            raise UsageError("--gpus-per-worker needs --gpus LIST or --gpus all")
        return [None] * workers
    k = 1 if gpus_per_worker is None else gpus_per_worker
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"--gpus-per-worker must be a whole number >= 1, not {k!r}")
    known, where = available_gpus()
    if gpus.strip() == "all":
        if not known:
            raise UsageError("--gpus all: no GPU found (nvidia-smi -L lists none and CUDA_VISIBLE_DEVICES "
                             "is not set): name them, e.g. --gpus 0,1")
        devices = known if where == "CUDA_VISIBLE_DEVICES" else [d for d in known if d.isdigit()]
    else:
        devices = [d.strip() for d in gpus.split(",")]
        bad = next((d for d in devices if not _GPU_NAME.match(d)), None)
        if bad is not None:
            raise UsageError(f"--gpus {gpus!r}: {bad!r} is not a GPU index or UUID "
                             f"(expected e.g. --gpus 0,1,2,3 or --gpus all)")
        twice = next((d for d in devices if devices.count(d) > 1), None)
        if twice is not None:
            raise UsageError(f"--gpus {gpus!r}: GPU {twice} is listed twice")
        unknown = next((d for d in devices if known is not None and d not in known), None)
        if unknown is not None:
            raise UsageError(f"--gpus: unknown GPU {unknown} ({where} gives {','.join(known)})")
    if len(devices) % k:
        raise UsageError(f"--gpus-per-worker {k} does not divide the {len(devices)} GPUs {','.join(devices)}")
    groups = [devices[i:i + k] for i in range(0, len(devices), k)]
    n = workers if workers is not None else len(groups)
    return [",".join(groups[i % len(groups)]) for i in range(n)]


def worker_argv(argv, parser):
    """The user's own `dbdict ... work ...` arguments without the pool's options (and their
    values), whatever prefix of them argparse accepted; -q/--quiet stays with the pool (its
    workers' logs keep their outcome lines, which the progress line counts)."""
    options = [o for o in parser._option_string_actions if o.startswith("--")]
    out, i = [], 0
    while i < len(argv):
        word = argv[i]
        name = word.split("=", 1)[0]
        matches = [name] if name in options else [o for o in options if o.startswith(name)] if \
            name.startswith("--") and len(name) > 2 else []
        if len(matches) == 1 and matches[0] in POOL_OPTIONS:
            i += 1 if "=" in word else 2
            continue
        if word in ("-q", "--quiet") or (len(matches) == 1 and matches[0] == "--quiet"):
            i += 1
            continue
        out.append(word)
        i += 1
    return out


# ---------------------------------------------------------------- processes

def _worker_preexec(pool_pid):
    # a terminal's Ctrl-C reaches the pool only: it forwards it once; a pool killed -9
    # still stops its workers cleanly (SIGTERM)
    return procs.dies_with(pool_pid, signal.SIGTERM)


def _children():
    """Pids of this process's children (live or zombie)."""
    return procs.children()


def _has_child(pid):
    """Whether worker `pid` has a child now: an attempt's shepherd (it runs a job)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return bool(f.read().split())
    except OSError:
        return False


class _Worker:
    """One place in the pool: its devices, its current process, how often it was replaced."""

    def __init__(self, index, gpus):
        self.index, self.gpus = index, gpus
        self.proc = None
        self.log = None
        self.offset = 0
        self.replaced = 0
        self.code = None  # the last process's exit code, once it ended
        self.replace_after = None  # boottime deadline: dead abnormally, a replacement is due
        self.lost = False  # died abnormally beyond MAX_REPLACEMENTS

    @property
    def alive(self):
        return self.proc is not None and self.code is None


class Pool:
    """N supervised `dbdict work` processes on this machine (see the module docstring)."""

    def __init__(self, tree, argv, gpu_sets, quiet=False, out=None):
        self.tree, self.argv, self.quiet = tree, list(argv), quiet
        self.out = out or sys.stderr
        self.workers = [_Worker(i, g) for i, g in enumerate(gpu_sets)]
        self.identity = booking.Identity.current()
        self.started = 0
        self.done = self.failed = self.other = 0  # outcomes in the workers' logs
        self.signals = None
        self.forwarded = 0
        self.record_path = None
        self._shown = None
        self._shown_at = 0.0
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()

    # ---------------------------------------------------------------- the loop

    def run(self):
        from .runner import StopSignals

        procs.prctl(procs.PR_SET_CHILD_SUBREAPER, 1)  # a dead worker's shepherd comes to us, to wait for
        host = self.identity.host.replace(os.sep, "_")
        os.makedirs(os.path.join(self.tree, WORKERS_DIR), exist_ok=True)
        os.makedirs(os.path.join(self.tree, POOLS_DIR), exist_ok=True)
        self.record_path = os.path.join(self.tree, POOLS_DIR, f"{host}-{os.getpid()}.json")
        self.started_at = booking.utc_iso()
        self._shown_at = time.monotonic()  # piped: the first line after 10 s, then the final one
        with StopSignals(tuple(FORWARD)) as signals:
            self.signals = signals
            # A worker's end wakes the loop at once: a handled SIGCHLD writes StopSignals'
            # wakeup fd (it is no stop signal), instead of waiting out the tick's 0.5 s.
            old_chld = signal.signal(signal.SIGCHLD, lambda signum, frame: None) if signals.fd is not None else None
            try:
                for w in self.workers:
                    if not self.stopping:  # a signal during the starts: the rest never start
                        self._start(w)
                self._record()
                while any(w.alive or w.replace_after is not None for w in self.workers):
                    self._tick()
            finally:
                self._end()  # still catching signals: a late Ctrl-C cannot cut the wait short
                if old_chld is not None:
                    signal.signal(signal.SIGCHLD, old_chld)
        return self._exit_code()

    def _tick(self):
        if self.signals.fd is not None:
            try:
                select.select([self.signals.fd], [], [], 0.5)
            except InterruptedError:
                pass
            self.signals.drain()
        else:
            time.sleep(0.5)
        self._forward()
        changed = False
        for w in self.workers:
            if w.alive and w.proc.poll() is not None:
                self._ended(w)
                changed = True
        orphans = self._reap_orphans()
        for w in self.workers:
            if w.replace_after is not None and (self.stopping or not orphans
                                                or procs.boottime() >= w.replace_after):
                w.replace_after = None
                if not self.stopping:
                    w.replaced += 1
                    self._start(w)
                changed = True
        if changed:
            self._record()
        self._progress()

    @property
    def stopping(self):
        return self.signals is not None and self.signals.stop

    def _forward(self):
        """Send each stop signal received since the last call to every live worker."""
        received = self.signals.received
        while self.forwarded < len(received):
            sig = FORWARD.get(received[self.forwarded], signal.SIGTERM)
            self.forwarded += 1
            for w in self.workers:
                if w.alive:
                    try:
                        os.kill(w.proc.pid, sig)
                    except ProcessLookupError:
                        pass

    def _start(self, w):
        env = dict(os.environ)
        if w.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = w.gpus
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        logs = os.path.join(self.tree, WORKERS_DIR)
        host = self.identity.host.replace(os.sep, "_")
        tmp = os.path.join(logs, f".starting.{host}-{os.getpid()}-{w.index}")
        with open(tmp, "ab") as log:
            w.proc = subprocess.Popen([sys.executable, "-m", "dbdict_fs.cli", *self.argv], stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=log, env=env, close_fds=True,
                                      preexec_fn=_worker_preexec(os.getpid()))
        # The log is named by the worker's pid, known only now: the open file follows the rename.
        w.log = os.path.join(logs, f"{host}-{w.proc.pid}.log")
        n = 0
        while os.path.exists(w.log):  # a pid this host used before: keep that log too
            n += 1
            w.log = os.path.join(logs, f"{host}-{w.proc.pid}.{n}.log")
        os.rename(tmp, w.log)
        w.offset, w.code = 0, None
        self.started += 1

    def _ended(self, w):
        w.code = w.proc.returncode
        self._count(w)
        if w.code >= 0 or self.stopping:
            return  # it meant to end (or the pool asked it to): never replaced
        name = _signal_name(-w.code)
        if w.replaced >= MAX_REPLACEMENTS:
            w.lost = True
            self._say(f"worker {w.proc.pid} was killed by {name}; not replaced: already replaced "
                      f"{w.replaced} times (log {w.log})")
            return
        self._say(f"worker {w.proc.pid} was killed by {name}: replacing it (log {w.log})")
        w.replace_after = procs.boottime() + ORPHAN_WAIT

    def _reap_orphans(self):
        """Reap the children that are not workers (a dead worker's attempt, reparented to the
        pool); returns how many of them still run."""
        workers = {w.proc.pid for w in self.workers if w.proc is not None}
        left = 0
        for pid in _children():
            if pid in workers:
                continue
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            left += reaped == 0
        return left

    def _end(self):
        """However the loop ended: no worker outlives the pool, nor any orphan it can wait for."""
        for w in self.workers:
            if w.alive and w.proc.poll() is None:  # only after an error of the pool itself
                w.proc.terminate()
        for w in self.workers:
            if w.alive:
                try:
                    w.proc.wait(120)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait()
                self._ended(w)
        deadline = procs.boottime() + 10
        while self._reap_orphans() and procs.boottime() < deadline:
            time.sleep(0.05)
        for w in self.workers:
            self._count(w)
        try:
            os.unlink(self.record_path)
        except (OSError, TypeError):
            pass
        self._progress(final=True)

    # ---------------------------------------------------------------- what it says

    def _count(self, w):
        """Count the outcome lines a worker's log gained since the last look."""
        try:
            with open(w.log, "rb") as f:
                f.seek(w.offset)
                data = f.read()
        except (OSError, TypeError):
            return
        end = data.rfind(b"\n") + 1
        w.offset += end
        for line in data[:end].splitlines():
            m = _OUTCOME.match(line)
            if m:
                if m.group(1) == b"done":
                    self.done += 1
                elif m.group(1) == b"failed":
                    self.failed += 1
                else:
                    self.other += 1

    def _line(self):
        alive = sum(w.alive for w in self.workers)
        running = sum(1 for w in self.workers if w.alive and _has_child(w.proc.pid))
        replaced = sum(w.replaced for w in self.workers)
        return (f"pool: {self.done} done, {running} running, {self.failed} failed; "
                f"workers {alive}/{len(self.workers)} alive, {replaced} replaced")

    def _progress(self, final=False):
        for w in self.workers:
            if w.alive:
                self._count(w)
        if self.quiet:
            return
        line = self._line()
        now = time.monotonic()
        if final:
            end = " (stopped by a signal)" if self.stopping else ""
            self.out.write(("\r\x1b[K" if self.tty else "") + line + end + "\n")
        elif self.tty:
            self.out.write("\r\x1b[K" + line)
        elif line != self._shown and now - self._shown_at >= 10:
            self.out.write(line + "\n")  # piped: a line when it changed, at most every 10 s
        else:
            return
        self._shown, self._shown_at = line, now
        self.out.flush()

    def _say(self, text):
        self.out.write(("\r\x1b[K" if self.tty else "") + f"dbdict: {text}\n")
        self.out.flush()

    def _record(self):
        """TREE/.dbdict/pools/<host>-<pid>.json: what `dbdict status` shows of this pool."""
        me = os.getpid()
        record = {"host": self.identity.host, "pid": me, "boot_id": self.identity.boot_id,
                  "pidns": self.identity.pidns, "start_ticks": procs.start_ticks(me),
                  "started": self.started_at, "updated": booking.utc_iso(), "workers": len(self.workers),
                  "alive": sum(w.alive for w in self.workers), "started_workers": self.started,
                  "replaced": sum(w.replaced for w in self.workers),
                  "not_replaced": sum(w.lost for w in self.workers),
                  "worker_pids": [w.proc.pid for w in self.workers if w.alive],
                  "gpus": [w.gpus for w in self.workers]}
        try:
            jd.atomic_write(self.record_path, json.dumps(record, indent=1).encode(), fsync=False)
        except OSError as exc:
            self._say(f"could not write {self.record_path}: {exc.strerror or exc}")

    def _exit_code(self):
        if self.stopping:
            return ExitCode.INCOMPLETE
        usage = next((w for w in self.workers if w.code == ExitCode.USAGE), None)
        if usage is not None:
            self.out.write(f"Error: worker {usage.proc.pid}: {_last_error(usage.log)} (log {usage.log})\n")
            return ExitCode.USAGE
        lost = sum(w.lost for w in self.workers)
        if lost:
            self.out.write(f"Error: {lost} worker{'s' if lost > 1 else ''} died and were not replaced "
                           f"(at most {MAX_REPLACEMENTS} replacements each)\n")
            return ExitCode.FAILED
        if self.failed and not self.done and not self.other:
            return ExitCode.FAILED  # every job the pool ran failed (as for one worker): a script must notice
        return ExitCode.OK


def _signal_name(num):
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _last_error(log):
    try:
        with open(log, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "see its log"
    line = next((x for x in reversed(lines) if x.startswith("Error: ")), lines[-1] if lines else "no output")
    return line[len("Error: "):] if line.startswith("Error: ") else line


# ---------------------------------------------------------------- the command and status

def run_pool(args):
    """`dbdict work TREE --workers N [--gpus ...]` (cmd_work hands over here)."""
    from . import options
    from .runner import make_options

    gpu_sets = plan_workers(args.workers, args.gpus, args.gpus_per_worker)
    make_options(**options.given(args))  # bad worker options: one error here, not N in logs
    tree = args.tree
    if not os.path.isdir(tree):
        raise UsageError(f"{tree}: no such directory")
    from .create import TREE_MARKER, check_tree

    if not os.path.isdir(os.path.join(tree, TREE_MARKER)):  # the pool's logs must not make a tree of it
        check_tree(tree, next(iter(jd.iter_jobdirs(tree)), None) is not None)
    argv = getattr(args, "_argv", None)
    if argv is None:
        argv = sys.argv[1:]  # called without cli.main (which keeps the arguments it parsed)
    return Pool(tree, worker_argv(argv, args._parser), gpu_sets, quiet=args.quiet).run()


def pool_records(tree):
    """The pools recorded under TREE/.dbdict/pools/ that may still run: a pool of this machine
    whose process is gone is left out; one of another host is shown as it last wrote."""
    import glob

    me = booking.Identity.current()
    out = []
    for path in sorted(glob.glob(os.path.join(glob.escape(os.path.join(tree, POOLS_DIR)), "*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        if me.same_machine(record) and not procs.alive(record.get("pid"), record.get("start_ticks")):
            continue  # killed -9 (its workers got SIGTERM): nothing runs
        out.append({k: record.get(k) for k in ("host", "pid", "workers", "alive", "started_workers", "replaced",
                                                "not_replaced", "gpus", "started", "updated")})
    return out


def describe(record):
    """One line of `dbdict status` for a pool record."""
    gpus = [g for g in record.get("gpus") or [] if g]
    lost = f", {record['not_replaced']} NOT replaced" if record.get("not_replaced") else ""
    return (f"  {record['host']} pid {record['pid']}: workers {record['alive']}/{record['workers']} alive, "
            f"{record['started_workers']} started, {record['replaced']} replaced{lost}"
            + (f"; gpus {' '.join(gpus)}" if gpus else "") + f"  (since {record['started']})")


__all__ = ["Pool", "available_gpus", "plan_workers", "pool_records", "run_pool", "worker_argv"]
