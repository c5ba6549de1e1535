"""Test seams: environment variables the tests set to make a process stop or fail at an
exact step, so a race runs the same way every time. Read once, at import; nothing in
production sets them, and every seam the package has is listed here.

- DBDICT_TEST_STOP_BEFORE_RENAME=<point>:<status>:<marker>[,...] (jobdir.write_state_file,
  update_state_link): write <marker> (this pid) and SIGSTOP, once per marker.
- DBDICT_TEST_LOST_LINK_REPLY: booking.link_claim's link() succeeds but reports EEXIST.
- DBDICT_TEST_STOP_AFTER_START: the runner SIGSTOPs itself after the first state write.
- DBDICT_TEST_MAX_PASSES=N: `work` stops after N passes.
- DBDICT_TEST_STOP_AT=<step>:<marker>[,...] (shepherd.test_stop): the process that reaches
  <step> of an attempt's start writes <marker> (its pid) and SIGSTOPs, once per marker.
- DBDICT_TEST_SEARCH_STOP=<point>:<marker>[,...] (searches._test_stop): a trial number's
  taker stops at `took` or `written`, once per marker.
- DBDICT_TEST_BREAK_TRIAL_CLAIM: every holder of a trial number looks dead (a broken claim,
  to see the tests catch it).
"""

import os


def _stops(text):
    """[(point, status, marker)] of DBDICT_TEST_STOP_BEFORE_RENAME."""
    out = []
    for spec in text.split(","):
        parts = spec.split(":", 2)
        if len(parts) == 3:
            out.append(tuple(parts))
    return out


STOP_BEFORE_RENAME = _stops(os.environ.get("DBDICT_TEST_STOP_BEFORE_RENAME", ""))
LOST_LINK_REPLY = bool(os.environ.get("DBDICT_TEST_LOST_LINK_REPLY"))
STOP_AFTER_START = bool(os.environ.get("DBDICT_TEST_STOP_AFTER_START"))
MAX_PASSES = int(os.environ.get("DBDICT_TEST_MAX_PASSES") or 0)
SEARCH_STOP = [tuple(spec.split(":", 1)) for spec in os.environ.get("DBDICT_TEST_SEARCH_STOP", "").split(",")
               if ":" in spec]
BREAK_TRIAL_CLAIM = bool(os.environ.get("DBDICT_TEST_BREAK_TRIAL_CLAIM"))
STOP_AT = [tuple(spec.split(":", 1)) for spec in os.environ.get("DBDICT_TEST_STOP_AT", "").split(",") if ":" in spec]


def stop_here(marker):
    """Write `marker` (this pid, atomically) and SIGSTOP this process, unless the marker
    exists already (each marker stops one process once)."""
    import signal

    if os.path.exists(marker):
        return
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    os.kill(os.getpid(), signal.SIGSTOP)
