#!/usr/bin/env bash
# The Debian packages the test suite drives for real; `make test` runs this first, so the
# README's test command needs nothing else on a fresh machine:
#   chromium + chromium-driver (tests/test_report.py renders the report headless),
#   fuse3 + libfuse2 (tests/fsim, the counting FUSE filesystem, through fusepy),
#   strace and faketime (stalled syscalls, a clock 120 s ahead: tests/test_commands.py).
# Each is installed with apt-get when missing and we are root; otherwise the script fails in
# one line naming what is missing (DBDICT_TEST_NO_SYSTEM=1: go on, and let those tests skip).
set -uo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
missing() {
    need=()
    have chromium || need+=(chromium)
    have chromedriver || need+=(chromium-driver)
    have fusermount || have fusermount3 || need+=(fuse3)
    [ -e /usr/lib/x86_64-linux-gnu/libfuse.so.2 ] ||
        { have ldconfig && ldconfig -p 2>/dev/null | grep -q "libfuse.so.2"; } || need+=(libfuse2)
    have strace || need+=(strace)
    have faketime || need+=(faketime)
}
missing
[ "${#need[@]}" -eq 0 ] && exit 0
if [ "$(id -u 2>/dev/null)" = 0 ] && have apt-get; then
    echo "make test: installing ${need[*]} (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need[@]}" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${need[@]}" >/dev/null 2>&1; }
    missing
    [ "${#need[@]}" -eq 0 ] && exit 0
fi
if [ "${DBDICT_TEST_NO_SYSTEM:-}" = 1 ]; then
    echo "make test: without ${need[*]}: the tests that drive them will skip (DBDICT_TEST_NO_SYSTEM=1)" >&2
    exit 0
fi
echo "make test: missing system packages the tests drive: ${need[*]} (as root: apt-get install ${need[*]};" \
     "or DBDICT_TEST_NO_SYSTEM=1 make test to let their tests skip)" >&2
exit 1
