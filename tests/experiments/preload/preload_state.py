"""A module tests/test_preload.py preloads: a global that each attempt changes."""

import os

COUNTER = 0
IMPORTED_IN = os.getpid()  # the zygote's pid when it was preloaded, else the experiment's own
