"""A 16-job PyTorch sweep through 8 `dbdict work` workers on one GPU, with and without
`--preload torch`, against the same 16 trainings in one in-process loop (issue 25).

Each job trains a small MLP on random data on the GPU (the same function in every case).
The loop pays `import torch` and the CUDA start once; a worker pays them per attempt
(without --preload: a fresh interpreter per job) or only CUDA's start (with --preload: each
attempt is a fork of a zygote that imported torch and never touched CUDA). Prints the
wall time of each and the ratios to the loop (goal with --preload: <= 1.1x). Ends in well
under 4 minutes on an H200 with 16 cores; every phase has a time limit.

usage: python bench/gpu_preload.py [--jobs 16] [--workers 8] [--steps 300] [--width 1024]
       python bench/gpu_preload.py --selftest   # no GPU, no torch: checks this script only
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PHASE_TIMEOUT = 100  # s per phase: loop, sweep, sweep --preload

EXPERIMENT = '''
import time


def train(state, channel=None):
    """A small MLP trained for `steps` steps on random data, on the GPU."""
    import torch

    torch.manual_seed(state["seed"])
    dev = "cuda"
    w = state["width"]
    layers = []
    for _ in range(3):
        layers += [torch.nn.Linear(w, w), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(w, 1)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=state["lr"])
    x = torch.randn(2048, w, device=dev)
    y = x[:, :1].sin()
    for _ in range(state["steps"]):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    state["loss"] = float(loss)
'''

SELFTEST_EXPERIMENT = '''
import time


def train(state, channel=None):
    """--selftest: no torch; a fixed sleep stands in for the GPU work."""
    import json  # the "preloaded" module of the self-test
    time.sleep(state["steps"] / 1000)
    state["loss"] = json.loads("0.5")
'''

LOOP = '''
import json, sys, time
sys.path.insert(0, sys.argv[1])
from gpu_exp import train
configs = json.loads(sys.argv[2])
for config in configs:
    train(dict(config))
'''


def configs(args):
    return [{"seed": i, "lr": 0.01, "steps": args.steps, "width": args.width} for i in range(args.jobs)]


def timed_run(cmd, env, what):
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=PHASE_TIMEOUT)
    if proc.returncode != 0:
        sys.exit(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def sweep(base, args, env, preload):
    """Create the jobs in a fresh tree and run them with `workers` workers; wall seconds."""
    tree = os.path.join(base, "tree-preload" if preload else "tree")
    sys.path.insert(0, ROOT)
    from dbdict_fs import create_jobs

    create_jobs(tree, configs(args), f"{os.path.join(base, 'gpu_exp.py')}:train")
    cmd = [sys.executable, "-m", "dbdict_fs.cli", "work", tree, "-q"] + (["--preload", preload] if preload else [])
    start = time.perf_counter()
    workers = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(args.workers)]
    said = set()
    try:
        for w in workers:
            _, err = w.communicate(timeout=max(1, PHASE_TIMEOUT - (time.perf_counter() - start)))
            said.update(line for line in err.splitlines() if line.startswith("dbdict:"))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    wall = time.perf_counter() - start
    for line in sorted(said):
        print(f"  worker said: {line}")
    status = subprocess.run([sys.executable, "-m", "dbdict_fs.cli", "status", tree, "--format", "json"],
                            env=env, capture_output=True, text=True, timeout=60)
    counts = json.loads(status.stdout)["counts"] if status.returncode == 0 else {}
    if counts.get("done") != args.jobs:
        sys.exit(f"the sweep{' with --preload' if preload else ''} did not finish every job: {counts}")
    return wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300, help="training steps per job (default 300)")
    parser.add_argument("--width", type=int, default=1024, help="the MLP's width (default 1024)")
    parser.add_argument("--selftest", action="store_true", help="no torch, no GPU: check the script itself")
    args = parser.parse_args()
    module = "json" if args.selftest else "torch"
    if not args.selftest:
        try:
            import torch
        except ImportError:
            sys.exit("torch is not installed here (use --selftest to check the script without it)")
        if not torch.cuda.is_available():
            sys.exit("no CUDA device here")
        del torch
    base = tempfile.mkdtemp(prefix="dbdict-gpu-")
    try:
        with open(os.path.join(base, "gpu_exp.py"), "w") as f:
            f.write(SELFTEST_EXPERIMENT if args.selftest else EXPERIMENT)
        with open(os.path.join(base, "loop.py"), "w") as f:
            f.write(LOOP)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
        print(f"{args.jobs} jobs ({args.steps} steps, width {args.width}), {args.workers} workers, "
              f"{os.cpu_count()} cores" + (" [selftest: sleeps, no GPU]" if args.selftest else ""))
        loop = timed_run([sys.executable, os.path.join(base, "loop.py"), base, json.dumps(configs(args))],
                         env, "the in-process loop")
        print(f"in-process loop (one interpreter, one import, one CUDA start): {loop:6.1f} s")
        plain = sweep(base, args, env, None)
        print(f"dbdict work x{args.workers}:                                   {plain:6.1f} s = {plain / loop:.2f}x the loop")
        pre = sweep(base, args, env, module)
        print(f"dbdict work x{args.workers} --preload {module}:                   {pre:6.1f} s = {pre / loop:.2f}x the loop"
              f"  (goal <= 1.1x: {'ok' if pre / loop <= 1.1 else 'over'}); {pre / plain:.2f}x without --preload")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
