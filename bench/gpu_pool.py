"""A short GPU check of local worker pools (issue 22), for a machine with NVIDIA GPUs.

Run from the project root with a Python that has dbdict_fs's dependencies (and torch, for
the training part; without torch the jobs only record their devices):

    .venv/bin/python bench/gpu_pool.py          # about a minute; prints PASS or FAIL

It needs no tree of yours (it works in a temporary directory) and checks, in under 2 minutes:
1. `dbdict work T --gpus all`: one worker per GPU of `nvidia-smi -L` (or CUDA_VISIBLE_DEVICES);
   every job is done, saw exactly its worker's device in CUDA_VISIBLE_DEVICES, and its state
   records it as `dbdict.gpus` (found again with `dbdict-query T dbdict.gpus=D`); with torch,
   each job trained a tiny model on `cuda`, seeing exactly one device;
2. `--gpus all --workers 2G` (G GPUs): two workers share each device, all jobs done;
3. one SIGINT to a pool with long GPU jobs running: `dbdict status` listed the pool, it exits 3,
   every job is ready again, and none of its processes is left.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEADLINE = time.monotonic() + 115
EXPERIMENT = '''
import os, time
from dbdict_fs import COMPLETE, INCOMPLETE

def main(state, channel):
    state.seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch
    except ImportError:
        state.torch = None
        end = time.monotonic() + state.seconds
        while time.monotonic() < end:
            time.sleep(0.1)
            if channel() == "stop":
                state.stopped = True
                return INCOMPLETE
        return COMPLETE
    state.torch = torch.__version__
    state.cuda_devices = torch.cuda.device_count()
    state.device_name = torch.cuda.get_device_name(0)
    torch.manual_seed(state.i)
    x = torch.randn(512, 64, device="cuda")
    y = x.sum(dim=1, keepdim=True)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    end = time.monotonic() + state.seconds
    step = 0
    while step < 50 or time.monotonic() < end:
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 20 == 0 and channel() == "stop":
            state.stopped = True
            return INCOMPLETE
    state.loss = float(loss)
    state.steps = step
    return COMPLETE
'''


class Failed(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failed(what)
    print(f"  ok: {what}")


def left():
    return max(5.0, DEADLINE - time.monotonic())


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, e.get("PYTHONPATH")) if p)
    return e


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dbdict_fs.cli", *map(str, args)], env=env(), capture_output=True,
                          text=True, timeout=left(), **kw)


def create(tree, exp, n, seconds):
    proc = cli("create", tree, "-e", f"{exp}:main", "i={%s}" % ",".join(map(str, range(n))), f"seconds={seconds}")
    if proc.returncode:
        raise Failed(f"create: {proc.stderr.strip()}")


def states(tree):
    """Each job's latest state, its bookkeeping as dotted keys (dbdict.status, dbdict.gpus)."""
    from dbdict_fs import jobdir as jd

    rows = []
    for path in jd.iter_jobdirs(tree):
        state = jd.read_latest_state(path)[1]
        rows.append(dict(state, **{f"dbdict.{k}": v for k, v in state["dbdict"].items()}))
    return rows


def gpus_of_this_machine():
    from dbdict_fs.pool import plan_workers

    return plan_workers(None, "all")


def part1(base, exp, gpus):
    print(f"1. --gpus all: {len(gpus)} worker(s), devices {gpus}")
    tree = os.path.join(base, "t1")
    create(tree, exp, 2 * len(gpus) + 2, 1)
    proc = cli("work", tree, "--gpus", "all")
    check(proc.returncode == 0, f"the pool exited 0 ({proc.stderr.strip().splitlines()[-1:]})")
    rows = states(tree)
    check(all(r["dbdict.status"] == "done" for r in rows), "every job is done")
    check(all(r["seen"] in gpus and r["dbdict.gpus"] == r["seen"] for r in rows),
          "each job saw one worker's devices, recorded as dbdict.gpus")
    check(len(os.listdir(os.path.join(tree, ".dbdict", "workers"))) == len(gpus), "one worker log per GPU group")
    first = gpus[0]
    found = json.loads(cli("query", tree, f"dbdict.gpus={first}", "--columns", "i", "--format", "json").stdout)
    check(len(found) == sum(r["seen"] == first for r in rows) > 0, f"dbdict-query T dbdict.gpus={first} finds them")
    if rows[0].get("torch"):
        check(all(r["cuda_devices"] == 1 for r in rows), "torch saw exactly one CUDA device in each job")
        check(all(r["loss"] == r["loss"] and r["steps"] >= 50 for r in rows), "each job trained on cuda")
        print(f"  ({rows[0]['device_name']}, torch {rows[0]['torch']})")
    else:
        print("  (torch is not importable here: the jobs only recorded their devices)")


def part2(base, exp, gpus):
    print(f"2. --gpus all --workers {2 * len(gpus)}: two workers per device")
    tree = os.path.join(base, "t2")
    create(tree, exp, 4 * len(gpus), 1)
    proc = cli("work", tree, "--gpus", "all", "--workers", 2 * len(gpus))
    check(proc.returncode == 0, "the pool exited 0")
    rows = states(tree)
    check(all(r["dbdict.status"] == "done" and r["dbdict.gpus"] == r["seen"] in gpus for r in rows),
          "every job done on one of the devices")


def part3(base, exp, gpus):
    print("3. one SIGINT stops the pool")
    tree = os.path.join(base, "t3")
    create(tree, exp, 2 * len(gpus), 300)
    err = open(os.path.join(base, "pool3.err"), "w+")
    pool = subprocess.Popen([sys.executable, "-m", "dbdict_fs.cli", "work", tree, "--gpus", "all"], env=env(),
                            stdout=subprocess.DEVNULL, stderr=err)
    try:
        while sum(r["dbdict.status"] == "running" for r in states(tree)) < len(gpus):
            if pool.poll() is not None or time.monotonic() > DEADLINE - 30:
                raise Failed("the pool's workers did not all start a job")
            time.sleep(0.5)
        time.sleep(3)  # let the experiments get into their training loops
        status = json.loads(cli("status", tree, "--format", "json").stdout)
        check([p["alive"] for p in status.get("pools", [])] == [len(gpus)], "dbdict status lists the pool")
        logs = os.listdir(os.path.join(tree, ".dbdict", "workers"))
        workers = [int(n.rsplit("-", 1)[1].split(".")[0]) for n in logs]
        pool.send_signal(signal.SIGINT)
        code = pool.wait(max(5.0, DEADLINE - time.monotonic()))
        check(code == 3, "the pool exited 3")
        rows = states(tree)
        check(all(r["dbdict.status"] == "ready" for r in rows), "every job is ready again")
        check(sum(bool(r.get("stopped")) for r in rows) == len(gpus),
              "the running experiments stopped through channel() 'stop'")
        time.sleep(0.5)
        alive = [p for p in workers if os.path.exists(f"/proc/{p}")]
        check(not alive, "no worker of the pool is left")
    finally:
        if pool.poll() is None:
            pool.kill()
        err.close()


def main():
    base = tempfile.mkdtemp(prefix="dbdict-gpu-pool-")
    ok = False
    try:
        exp = os.path.join(base, "gpu_exp.py")
        with open(exp, "w") as f:
            f.write(EXPERIMENT)
        gpus = gpus_of_this_machine()
        part1(base, exp, gpus)
        part2(base, exp, gpus)
        part3(base, exp, gpus)
        ok = True
    except Failed as exc:
        print(f"  FAILED: {exc}")
    except Exception as exc:  # noqa: BLE001 - a check script: say what broke, then FAIL
        print(f"  ERROR: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
