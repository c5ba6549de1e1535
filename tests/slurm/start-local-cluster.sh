#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for dbdict_fs's SLURM tests (tests/test_slurm.py).
# Debian/Ubuntu, as root, without systemd. Everything listens on 127.0.0.1.
#
#   tests/slurm/start-local-cluster.sh [start]   install if missing, configure, start, wait until idle
#   tests/slurm/start-local-cluster.sh stop      stop munged, slurmctld, slurmd (by their pid files)
#   tests/slurm/start-local-cluster.sh status    exit 0 when the node answers and is usable
#
# Idempotent: daemons already running with the same config are left alone, so a developer's
# cluster survives test runs. Daemons that are not running are started from scratch: stale pid
# files (a pid that is gone or now belongs to another program) are ignored, and slurmctld
# starts with -c (no job records from an earlier, killed session), so the next CI run on the
# same machine starts clean. Env knobs:
#   DBDICT_SLURM_CPUS       CPUs advertised for the node (default 4: four 1-CPU tasks at once,
#                           even on a 2-core machine)
#   DBDICT_SLURM_PARTITION  partition name (default debug)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CONF=/etc/slurm/slurm.conf
RUN=/run/slurm
PART=${DBDICT_SLURM_PARTITION:-debug}
CPUS=${DBDICT_SLURM_CPUS:-4}
T0=$(date +%s)

log() { echo "[start-local-cluster] $*" >&2; }
die() { log "$*"; exit 1; }

alive() {  # alive PIDFILE NAME -> 0 if PIDFILE names a live (not zombie) process called NAME
  local pid state
  [ -s "$1" ] || return 1
  pid=$( { tr -dc 0-9 < "$1"; } 2>/dev/null)
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$state" ] && [ "$state" != Z ]
}

stop_one() {  # stop_one PIDFILE NAME
  local pid
  if alive "$1" "$2"; then
    pid=$( { tr -dc 0-9 < "$1"; } 2>/dev/null)
    log "stopping $2 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do alive "$1" "$2" || break; sleep 0.2; done
    if alive "$1" "$2"; then log "$2 did not exit: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$1"
}

node_state() { sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null | head -1 || true; }

usable() {  # the controller answers and the node can run jobs
  alive "$RUN/slurmctld.pid" slurmctld && alive "$RUN/slurmd.pid" slurmd || return 1
  case "$(node_state)" in idle*|mixed*|allocated*|completing*) return 0 ;; esac
  return 1
}

case "${1:-start}" in
  stop)
    stop_one "$RUN/slurmd.pid" slurmd
    stop_one "$RUN/slurmctld.pid" slurmctld
    stop_one /run/munge/munged.pid munged
    exit 0 ;;
  status)
    for d in "/run/munge/munged.pid munged" "$RUN/slurmctld.pid slurmctld" "$RUN/slurmd.pid slurmd"; do
      set -- $d
      if alive "$1" "$2"; then echo "$2: running (pid $(cat "$1"))"; else echo "$2: not running"; fi
    done
    if usable; then sinfo; exit 0; fi
    exit 1 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, starts daemons)"

# 1. Packages, only when missing.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "slurm is not installed and there is no apt-get to install it"
  log "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  log "installed in $(( $(date +%s) - T0 ))s"
fi

# 2. munge: a key, and the daemon running as the munge user.
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating the munge key"
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key; chmod 755 /run/munge
if ! alive /run/munge/munged.pid munged; then
  log "starting munged"
  rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 1 50); do alive /run/munge/munged.pid munged && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null || die "munge self-test failed (see /var/log/munge/munged.log)"

# 3. slurm.conf from the template; a changed config restarts slurmctld and slurmd.
HOST=$(hostname -s)
MEM=$(( $(awk '/^MemTotal:/{print int($2/1024)}' /proc/meminfo) - 1024 ))
[ "$MEM" -lt 512 ] && MEM=512
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm "$RUN"
NEW=$(mktemp)
sed -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" -e "s|@PART@|$PART|g" \
    -e "s|@RUN@|$RUN|g" "$HERE/slurm.conf.in" > "$NEW"
if ! cmp -s "$NEW" "$CONF"; then
  cp "$NEW" "$CONF"; chmod 644 "$CONF"; log "wrote $CONF"
  stop_one "$RUN/slurmd.pid" slurmd
  stop_one "$RUN/slurmctld.pid" slurmctld
fi
rm -f "$NEW"

# 4. Daemons (they daemonize and write their pid files). A controller that is not running
#    starts clean (-c: no job records of an earlier session), and so does its slurmd.
if ! alive "$RUN/slurmctld.pid" slurmctld; then
  stop_one "$RUN/slurmd.pid" slurmd
  rm -f "$RUN/slurmctld.pid"
  log "starting slurmctld"
  slurmctld -c
fi
for _ in $(seq 1 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
scontrol ping >/dev/null 2>&1 || die "slurmctld does not answer (see /var/log/slurm/slurmctld.log)"
if ! alive "$RUN/slurmd.pid" slurmd; then
  rm -f "$RUN/slurmd.pid"
  log "starting slurmd"
  slurmd
fi

# 5. Wait until the node can run jobs; resume it if an earlier run left it down or drained.
state=""
for i in $(seq 1 120); do
  state=$(node_state)
  case "$state" in
    idle*|mixed*|allocated*|completing*) break ;;
    down*|drain*|fail*) [ "$i" -gt 3 ] && { scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true; } ;;
  esac
  sleep 0.5
done
case "$state" in
  idle*|mixed*|allocated*|completing*) ;;
  *) die "node $HOST is not ready (state '$state'); see /var/log/slurm/*.log" ;;
esac
log "cluster up in $(( $(date +%s) - T0 ))s: node $HOST, $CPUS CPUs, partition $PART"
