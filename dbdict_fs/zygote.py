"""`dbdict work --preload MOD[,MOD...]`: one zygote per worker forks each attempt (DESIGN.md 5).

The zygote is a fresh interpreter, the worker's child, that imports MODs once (e.g.
`numpy,torch`) and then only waits for requests: it never runs experiment code. For each
attempt the worker sends it the attempt's descriptors (stdin, stdout, stderr, the control,
result, shepherd and report pipes) over a Unix socket, and the zygote forks the attempt's
shepherd (dbdict_fs.shepherd.fork_shepherd), which forks the experiment's process: an
attempt pays two forks instead of an interpreter and the imports. Each experiment is a
fresh fork of a zygote that never ran experiment code, so nothing of one attempt's module
state reaches the next.

Rules (docs/design.md 9.h):

* the zygote forks only while it has one thread: a fork copies only the forking thread,
  and a lock another thread held would stay held forever in the fork. A module that
  starts a thread at import (or initialises CUDA, which starts threads) makes it refuse:
  the worker says so once and starts experiments in a fresh interpreter, as without
  --preload;
* it dies with its worker (PR_SET_PDEATHSIG, SIGKILL); its shepherds die with it
  (DEATH_SIGNAL), and end every process of their attempt, as they do when the worker dies;
* the worker restarts it when it died, without waiting for its imports while it holds a
  claim: until the new one is ready, attempts start in a fresh interpreter.

Run as `python -m dbdict_fs.zygote SOCKET_FD MOD[,MOD...]`.
"""

import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys

from . import procs

_FDS = 7  # stdin, stdout, stderr, control_r, result_w, shepherd_r, report_w
START_TIMEOUT = 600.0  # s the first start may take to import (torch on a cold file system)
DEFAULT_START_WAIT = 10.0  # s a worker waits for its default zygote (an interpreter start) at most


# ---------------------------------------------------------------- the zygote process

def _cuda_initialised():
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a torch without cuda, or a partial import
        return False


def refusal():
    """Why this process must not fork an attempt now, or None."""
    from .procs import thread_count

    if _cuda_initialised():
        return "CUDA was initialised at import (a fork cannot use it)"
    n = thread_count()
    if n > 1:
        return f"it has {n} threads after the imports (a module started threads at import)"
    return None


def quiesce_blas():
    """Stop the worker threads OpenBLAS starts when it is loaded (numpy's, hence torch's: one
    per core but one). OpenBLAS itself does this before every fork (its pthread_atfork
    handler, blas_thread_shutdown_), and its next call in the fork starts them again with
    the same settings; doing it once here, after the imports, leaves the zygote with one
    thread, so it may fork. Returns the libraries it quiesced."""
    import ctypes

    done = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
    except OSError:
        return done
    for path in sorted(p for p in paths if "openblas" in os.path.basename(p).lower() and ".so" in p):
        try:
            shutdown = ctypes.CDLL(path).blas_thread_shutdown_
        except (OSError, AttributeError):
            continue
        shutdown()
        done.append(path)
    return done


def _reap(signum=None, frame=None):
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(sock, modules):
    import importlib

    procs.set_name("dbdict-zygote")

    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - said to the worker, which goes on without us
            sock.sendall(f"error cannot import {name}: {type(exc).__name__}: {exc}\n".encode())
            return 1
    from . import child, shepherd  # what every attempt needs, imported once here too

    signal.signal(signal.SIGCHLD, _reap)  # the shepherds we forked: reaped as they end
    quiesce_blas()
    reason = refusal()
    sock.sendall(f"refused {reason}\n".encode() if reason else b"ready\n")
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 20, _FDS)
        except OSError:
            return 0
        if not data:
            return 0  # the worker closed the socket: it is done
        try:
            answer = _fork_one(json.loads(data), fds, child, shepherd)
        finally:
            for fd in fds:
                os.close(fd)
        try:
            sock.sendall(answer.encode())
        except OSError:
            return 0


def _fork_one(request, fds, child, shepherd):
    shepherd.test_stop("zygote-request")
    reason = refusal()
    if reason or len(fds) != _FDS:
        return f"refused {reason or 'a request without its descriptors'}\n"
    stdin, stdout, stderr, control_r, result_w, shep_r, report_w = fds
    pid = shepherd.fork_shepherd(
        shep_r, report_w, float(request["fence_after"]), (control_r, result_w), (stdin, stdout, stderr),
        request["cwd"], fork_main=lambda: child.run_forked(control_r, result_w), env=request["env"])
    return f"ok {pid}\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(argv[0]))
    modules = [m for m in argv[1].split(",") if m]
    return serve(sock, modules)


# ---------------------------------------------------------------- the worker's side

_ZYGOTES = {}  # (worker pid, modules) -> Zygote: one per worker process


def for_worker(modules, env, warn):
    """This worker's zygote for `modules` ("numpy,torch", checked by options.MODULES; "" for
    the default zygote, which imports nothing of the user's; started on first use)."""
    key = (os.getpid(), tuple(m for m in modules.split(",") if m))
    if key not in _ZYGOTES:
        _ZYGOTES[key] = Zygote(key[1], env, warn)
    return _ZYGOTES[key]


def close_all():
    for key in [k for k in _ZYGOTES if k[0] == os.getpid()]:
        _ZYGOTES.pop(key).close()


class Zygote:
    """The worker's handle on its zygote: started once, restarted when it died."""

    def __init__(self, modules, env, warn):
        self.modules, self.env, self._warn = tuple(modules), env, warn
        # how messages name it: the default zygote (no modules) is not something the user asked for
        self.name = f"--preload {','.join(modules)}" if modules else "the worker's zygote"
        self.proc = self.sock = None
        self.ready = False  # it said `ready`
        self.refused = None  # why it will never fork (said once)
        self.import_error = None  # its first start could not import a module (a usage error)
        self.starts = 0
        self._said = set()

    def _say_once(self, key, text):
        if key not in self._said:
            self._said.add(key)
            self._warn(text)

    def start(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        worker = os.getpid()

        # a terminal's ^C goes to the worker only; the zygote dies with it (SIGKILL)
        preexec = procs.dies_with(worker, signal.SIGKILL)

        safe = ["-P"] if sys.version_info >= (3, 11) else []
        try:
            self.proc = subprocess.Popen(
                [sys.executable, *safe, "-m", "dbdict_fs.zygote", str(theirs.fileno()), ",".join(self.modules)],
                stdin=subprocess.DEVNULL, env=self.env, pass_fds=(theirs.fileno(),), preexec_fn=preexec,
                close_fds=True)
        except OSError as exc:
            ours.close()
            self.refused = f"cannot start it: {exc.strerror or exc}"
            self._say_once("refused", f"{self.name}: {self.refused}; experiments start in a fresh interpreter")
            return
        finally:
            theirs.close()
        self.sock, self.ready = ours, False
        self.starts += 1

    def wait_ready(self, timeout, also=None):
        """Read the zygote's first word within `timeout` s (or until `also`, a signal pipe,
        is readable). True once it is ready to fork."""
        if self.ready or self.refused:
            return self.ready
        if self.sock is None:
            self.start()
            if self.sock is None:
                return False
        try:
            readable, _, _ = select.select([self.sock] + ([also] if also is not None else []), [], [], timeout)
        except InterruptedError:
            readable = []
        if self.sock not in readable:
            return False
        word = self._read()
        if word == "ready":
            self.ready = True
        elif word is None:
            self._lost()
        else:
            self.refused = word.split(" ", 1)[1] if " " in word else word
            if word.startswith("error ") and self.starts == 1:
                self.import_error = self.refused  # the caller says it: a usage error
            else:
                self._say_once("refused", f"{self.name}: the zygote refuses to fork: "
                                          f"{self.refused}; experiments start in a fresh interpreter")
            self.close()
        return self.ready

    def _read(self):
        try:
            data = self.sock.recv(4096)
        except OSError:
            return None
        return data.decode(errors="replace").strip() or None

    def _lost(self):
        """It died (killed, out of memory): restart it now; it serves once it is ready."""
        self._say_once("died", f"{self.name}: the zygote died (exit {self._reap()}); restarting it")
        self.close()
        self.start()

    def _reap(self):
        try:
            return self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def fork_attempt(self, fds, cwd, env, fence_after):
        """Ask the zygote to fork an attempt's shepherd; its pid, or None (then the caller
        starts the attempt another way: nothing of this try is left running)."""
        if not self.wait_ready(0):
            return None
        request = json.dumps({"cwd": cwd, "env": env, "fence_after": fence_after}).encode()
        try:
            socket.send_fds(self.sock, [request], list(fds))
            answer = self._read()
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
            answer = None
        if answer is None:
            self._lost()
            return None
        if answer.startswith("ok "):
            return int(answer.split()[1])
        self._say_once("refused", f"{self.name}: the zygote refuses to fork: {answer[8:]}; "
                                  f"experiments start in a fresh interpreter")
        self.refused = answer[8:]
        self.close()
        return None

    def close(self):
        """End it (EOF on its socket; it holds nothing of any attempt) and reap it."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            self._reap()
            self.proc = None
        self.ready = False


if __name__ == "__main__":
    sys.exit(main())
