"""Process helpers for the booking tests: workers as real processes on simulated hosts.

Each worker runs under a small supervisor ("shim", `python tests/procs.py shim ...`) that
plays the part of its host's init:

* it is a child subreaper, so the experiment child of a `kill -9`ed worker is reparented to
  it and reaped at once, as on a host whose init reaps (systemd): reap="all". An init that
  never reaps (a container without --init; this CI VM's PID 1 is such a one) is simulated
  deterministically, whatever the machine's real init does: reap="worker" reaps only the
  worker (as its shell would) and leaves its orphaned experiment a zombie; reap="none"
  leaves the dead worker itself a zombie too (a worker whose parent is such an init);
* it imports dbdict_fs, then waits for a start file before running the worker (a start
  barrier: N workers begin booking within milliseconds of each other);
* the worker is a forked copy of the shim running `dbdict_fs.cli.main(argv)`: a real process
  with its own pid, signals and experiment children, exactly what `dbdict work` runs.

The simulated host is the env seam of dbdict_fs.booking: DBDICT_HOST (own boot_id too) and
DBDICT_CLOCK_OFFSET. The shim dies with the test process (PR_SET_PDEATHSIG), and the worker
with its shim, so an aborted test leaves nothing running.
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

from conftest import pid_gone, wait_for  # noqa: F401 - re-exported for the booking tests
from dbdict_fs.procs import stat_fields as proc_stat_fields

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


# ---------------------------------------------------------------- small helpers

def proc_state(pid):
    """The state letter of /proc/<pid>/stat (R, S, T, Z, ...), or None if there is no such pid."""
    fields = proc_stat_fields(pid)
    return fields[0].decode() if fields else None


def proc_ppid(pid):
    fields = proc_stat_fields(pid)
    return int(fields[1]) if fields else None


def experiment_processes(tree):
    """Pids of live experiment processes whose cwd is inside `tree`: a fresh interpreter
    (`-m dbdict_fs.child`) or a fork of a zygote (its process name is dbdict-child)."""
    return processes_in(tree, lambda cmdline: (b"dbdict_fs.child" in cmdline and b"dbdict_fs.shepherd" not in cmdline)
                        or cmdline.startswith(b"comm=dbdict-child\0"))


def processes_in(tree, wanted=lambda cmdline: b"dbdict_fs" in cmdline):
    """Pids of live processes whose cwd is inside `tree` and whose command line is `wanted`
    (which sees it prefixed with `comm=NAME\\0`, the process name)."""
    tree = os.path.realpath(str(tree))
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{name}/comm", "rb") as f:
                cmdline = b"comm=" + f.read().strip() + b"\0" + cmdline
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if wanted(cmdline) and (cwd == tree or cwd.startswith(tree + os.sep)) and not pid_gone(int(name)):
            found.append(int(name))
    return found


def _prctl(option, value):
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(option, value, 0, 0, 0)


# ---------------------------------------------------------------- the test side

class Host:
    """One worker process on a simulated host, under its shim. Use start(), then .pid.

    `argv` are the arguments of `dbdict` (e.g. ["work", tree, "--wait"]). `host` sets
    DBDICT_HOST (None: the real host), `clock_offset` DBDICT_CLOCK_OFFSET.
    """

    def __init__(self, argv, logdir, *, name=None, host=None, clock_offset=None, env=None,
                 start_file=None, reap="all"):
        assert reap in ("all", "worker", "none"), reap
        self.argv = [str(a) for a in argv]
        self.name = name or f"w{id(self):x}"
        self.logdir = str(logdir)
        self.start_file = start_file
        self.reap = reap
        self.env = dict(os.environ)
        self.env.pop("DBDICT_HOST", None)
        self.env.pop("DBDICT_BOOT_ID", None)
        self.env.pop("DBDICT_CLOCK_OFFSET", None)
        if host is not None:
            self.env["DBDICT_HOST"] = host
        if clock_offset is not None:
            self.env["DBDICT_CLOCK_OFFSET"] = str(clock_offset)
        self.env.update(env or {})
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, self.env.get("PYTHONPATH")) if p)
        self.shim = None
        self.pid = None
        self.stopped = False
        self._exit = None

    @property
    def log(self):
        return os.path.join(self.logdir, f"{self.name}.log")

    @property
    def _pidfile(self):
        return os.path.join(self.logdir, f"{self.name}.pid")

    @property
    def _statusfile(self):
        return os.path.join(self.logdir, f"{self.name}.exit")

    def start(self, wait_pid=True):
        os.makedirs(self.logdir, exist_ok=True)
        for path in (self._pidfile, self._statusfile):
            if os.path.exists(path):
                os.unlink(path)
        cmd = [sys.executable, os.path.abspath(__file__), "shim", "--pidfile", self._pidfile,
               "--statusfile", self._statusfile]
        if self.start_file:
            cmd += ["--start-file", str(self.start_file)]
        cmd += ["--reap", self.reap]
        cmd += ["--", *self.argv]
        with open(self.log, "ab") as log:
            self.shim = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, cwd=self.logdir)
        if wait_pid:
            self.wait_pid()
        return self

    def wait_pid(self, timeout=30):
        def read():
            if self.shim.poll() is not None and not os.path.exists(self._pidfile):
                raise AssertionError(f"{self.name}: shim exited with {self.shim.returncode}:\n{self.output()}")
            try:
                with open(self._pidfile) as f:
                    return int(f.read())
            except (OSError, ValueError):
                return None
        self.pid = wait_for(read, timeout, what=f"{self.name} to start")
        return self.pid

    def exit_code(self):
        """The worker's exit code (128+N when killed by signal N), or None while it runs."""
        if self._exit is None:
            try:
                with open(self._statusfile) as f:
                    self._exit = int(f.read())
            except (OSError, ValueError):
                return None
        return self._exit

    def running(self):
        return self.exit_code() is None

    def wait(self, timeout):
        """Wait for the worker to exit; returns its exit code."""
        return wait_for(lambda: self.exit_code() is not None or None, timeout, interval=0.05,
                        what=f"worker {self.name} (pid {self.pid}) to exit") and self.exit_code()

    def signal(self, sig):
        """Signal the worker, if it still runs (the shim has not reaped it: its pid is ours)."""
        if self.pid is None or self.exit_code() is not None:
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        if sig == signal.SIGSTOP:
            self.stopped = True
        elif sig == signal.SIGCONT:
            self.stopped = False
        return True

    def kill9(self, timeout=30):
        """kill -9 the worker and wait until its shim has reaped it."""
        if self.signal(signal.SIGKILL):
            self.wait(timeout)
        self.stopped = False
        return self.exit_code()

    def output(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def close(self):
        """Teardown: kill the worker if it still runs, then end the shim (it reaps everything)."""
        if self.shim is None:
            return
        if self.exit_code() is None and self.pid is not None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    pass
        if self.shim.poll() is None:
            self.shim.send_signal(signal.SIGTERM)
            try:
                self.shim.wait(15)
            except subprocess.TimeoutExpired:
                self.shim.kill()
                self.shim.wait(5)


class Hosts:
    """A set of Hosts sharing a start barrier; closes them all on exit (use as a fixture)."""

    def __init__(self, logdir):
        self.logdir = str(logdir)
        self.start_file = os.path.join(self.logdir, "GO")
        self.all = []

    def add(self, argv, *, barrier=False, **kw):
        kw.setdefault("name", f"w{len(self.all)}")
        host = Host(argv, self.logdir, start_file=self.start_file if barrier else None, **kw)
        self.all.append(host)
        return host.start()

    def go(self):
        """Release the workers waiting at the barrier (all have started and imported)."""
        with open(self.start_file, "w"):
            pass

    def close(self):
        for host in self.all:
            host.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- job inspection

def claim_epochs(jobdir):
    from dbdict_fs import jobdir as jd

    return sorted(jd.list_job(jobdir).claim_epochs)


def check_job_files(jobdir):
    """Every state.<E>.yaml parses as JSON and says epoch E; returns {E: state}."""
    from dbdict_fs import jobdir as jd

    out = {}
    for epoch in jd.list_job(jobdir).state_epochs:
        path = os.path.join(jobdir, jd.state_name(epoch))
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read())  # the tool writes JSON: a torn file would not parse
        except FileNotFoundError:
            continue
        assert data["dbdict"]["epoch"] == epoch, f"{path} says epoch {data['dbdict']['epoch']}"
        out[epoch] = data
    return out


def read_log(path):
    """The shared O_APPEND log: {i: [pid, ...]} in the order the lines were appended."""
    runs = {}
    if not os.path.exists(path):
        return runs
    with open(path) as f:
        for line in f:
            i, pid = line.split()
            runs.setdefault(int(i), []).append(int(pid))
    return runs


# ---------------------------------------------------------------- experiments of these tests

EXPERIMENTS = os.path.abspath(__file__)  # spec: f"{procs.EXPERIMENTS}:lingering"


def lingering(state, channel):
    """Returns at once, but a non-daemon thread keeps its process alive `linger` seconds
    (as a library's pool or a flush at exit may)."""
    import threading

    threading.Thread(target=time.sleep, args=(state.linger,)).start()
    state.result = "returned"


# ---------------------------------------------------------------- the shim

def shim_main(argv):
    import argparse

    p = argparse.ArgumentParser(prog="procs.py shim")
    p.add_argument("--pidfile", required=True)
    p.add_argument("--statusfile", required=True)
    p.add_argument("--start-file")
    p.add_argument("--reap", choices=("all", "worker", "none"), default="all")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the test process
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # the worker's orphans come to us (we are its host's init)
    if os.getppid() == 1:
        os._exit(70)
    from dbdict_fs import booking, cli, jobdir, runner  # noqa: F401 - preloaded before the barrier

    shim_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # and the worker dies with us
        if os.getppid() != shim_pid:
            os._exit(70)
        if args.start_file:
            while not os.path.exists(args.start_file):
                time.sleep(0.002)
        code = 1
        try:
            code = cli.main(command)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 1)

    finish = []
    signal.signal(signal.SIGTERM, lambda *a: finish.append(1))
    tmp = args.pidfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, args.pidfile)

    # wait for the worker; with reap="none" without reaping it (WNOWAIT: it stays a zombie)
    info = os.waitid(os.P_PID, pid, os.WEXITED | (os.WNOWAIT if args.reap == "none" else 0))
    code = info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status
    with open(args.statusfile + ".tmp", "w") as f:
        f.write(str(code))
    os.rename(args.statusfile + ".tmp", args.statusfile)

    if args.reap != "all":
        while not finish:  # zombies stay until the test ends us
            time.sleep(0.05)
    deadline = time.monotonic() + (2 if args.reap != "all" else 10)
    while time.monotonic() < deadline:  # reap the orphans (they die with their worker)
        try:
            reaped, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if reaped == 0:
            time.sleep(0.01)
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["shim"]:
        sys.exit(shim_main(sys.argv[2:]))
    sys.exit("usage: procs.py shim --pidfile F --statusfile F [--start-file F] [--no-reap] -- ARGS")


def dead_pid():
    """A pid that certainly names no live process now (a child we started and reaped)."""
    import subprocess as _sp

    proc = _sp.Popen(["true"])
    proc.wait()
    return proc.pid


def token_dead_here(**extra):
    """A claim token of a holder on *this* machine whose process is gone: booking's
    same-host fast path proves it stale at once (DESIGN 4), without any clock."""
    from dbdict_fs.booking import Identity

    me = Identity.current()
    token = {"host": me.host, "boot_id": me.boot_id, "pidns": me.pidns, "pid": dead_pid(),
             "start_ticks": 1, "lease": 600, "heartbeat": 30, "purpose": "run", "time": "2026-01-01T00:00:00Z"}
    token.update(extra)
    return token


def worker_starter(hosts, sides, lease, heartbeat):
    """For a chaos run: a function that starts the next `work --wait` worker under `hosts`,
    the sides [(the tree as a host sees it, host name)] taking turns; `.started` lists
    every worker it started."""
    started = []

    def new_worker():
        seen_as, host = sides[len(started) % len(sides)]
        started.append(hosts.add(["work", seen_as, "--wait", "--lease", lease, "--heartbeat", heartbeat,
                                  "--max-attempts", 20, "-q"], host=host))
        return started[-1]

    new_worker.started = started
    return new_worker
