"""A toy but honest training loop: SGD on a synthetic regression problem.

It reads its parameters from `state`, checkpoints to its working directory every epoch
(tmp file + rename), resumes from that checkpoint after a preemption, and writes its
results back into `state`. Pure Python, so the demo needs nothing but dbdict_fs.
"""

import json
import os
import random
import time

from dbdict_fs import COMPLETE, INCOMPLETE

CHECKPOINT = "checkpoint.json"


def make_data(seed, n=200, dim=4):
    rng = random.Random(seed)
    true_w = [rng.uniform(-1, 1) for _ in range(dim)]
    data = []
    for _ in range(n):
        x = [rng.gauss(0, 1) for _ in range(dim)]
        y = sum(a * b for a, b in zip(true_w, x)) + rng.gauss(0, 0.1)
        data.append((x, y))
    return data[: n * 3 // 4], data[n * 3 // 4:]


def mse(w, data):
    return sum((sum(a * b for a, b in zip(w, x)) - y) ** 2 for x, y in data) / len(data)


def main(state, channel):
    """Train for state.epochs epochs; answer the channel between epochs."""
    train, valid = make_data(state.seed, dim=state.model.width)
    if os.path.exists(CHECKPOINT):  # resuming after a preemption
        with open(CHECKPOINT) as f:
            ckpt = json.load(f)
        print(f"resuming from epoch {ckpt['epoch']}")
    else:
        ckpt = {"epoch": 0, "w": [0.0] * state.model.width}
    w, rng = ckpt["w"], random.Random(state.seed * 1000 + ckpt["epoch"])
    lr = state.lr * (0.5 if state.model.arch == "damped" else 1.0)
    while ckpt["epoch"] < state.epochs:
        rng.shuffle(train)
        for x, y in train:
            err = sum(a * b for a, b in zip(w, x)) - y
            w = [wi - lr * err * xi for wi, xi in zip(w, x)]
        ckpt = {"epoch": ckpt["epoch"] + 1, "w": w}
        with open(CHECKPOINT + ".tmp", "w") as f:
            json.dump(ckpt, f)
        os.replace(CHECKPOINT + ".tmp", CHECKPOINT)
        state.epoch = ckpt["epoch"]
        # The learning curve (dbdict history / plot --curve / report); also sets the state's values.
        channel.log(ckpt["epoch"], train_err=mse(w, train), valid_err=mse(w, valid))
        print(f"epoch {ckpt['epoch']}: train {state.train_err:.4f} valid {state.valid_err:.4f}", flush=True)
        time.sleep(state.get("epoch_time", 0.0))  # pretend epochs take a while
        answer = channel()
        if answer in ("stop", "finish-up"):
            print(f"stopping at epoch {ckpt['epoch']} ({answer}); will resume from the checkpoint")
            return INCOMPLETE
        if answer == "save":
            channel.save()  # intermediate results become visible to dbdict-query
    return COMPLETE
