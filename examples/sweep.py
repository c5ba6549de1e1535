"""The demo sweep: lr x seed x model.arch, 24 jobs of examples/train.py."""

import os

EXPERIMENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py") + ":main"


def jobs(epochs=5):
    for arch in ("plain", "damped"):
        for lr in (0.003, 0.01, 0.03, 0.1):
            for seed in (1, 2, 3):
                yield {"lr": lr, "seed": seed, "epochs": epochs, "model": {"arch": arch, "width": 4}}
