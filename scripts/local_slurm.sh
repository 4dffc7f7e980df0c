#!/usr/bin/env bash
# A SLURM cluster on this machine, without systemd, for trying `hydra/launcher=slurm` on a laptop
# or workstation and for CI (`.ci/run`). Needs root and Debian/Ubuntu packages (installed when
# missing: slurmctld slurmd slurm-client munge iproute2).
#
# The node `localhost` (this machine's CPUs) is partition `debug`, the default. Partition `twonode`
# has two more nodes, pdnode1 and pdnode2, each a slurmd in its own network namespace with its own
# address and hostname (10.77.0.11 and .12 on bridge pdbr0): multi-node jobs run for real on one
# machine (see scripts/local_slurm_nodes.sh). Where namespaces cannot be made (no `ip`, no
# permission; or SLURM_TWONODE=0), `start` brings up `debug` alone and says why `twonode` is missing.
#
#   sudo bash scripts/local_slurm.sh start    # install if needed, write /etc/slurm/slurm.conf, start, wait for idle
#   sudo bash scripts/local_slurm.sh stop     # cancel every job, stop every slurmd, slurmctld and munged, remove
#                                             # the namespaces, interfaces and files of the two nodes
#   bash scripts/local_slurm.sh status        # sinfo, squeue and the daemons' pids
#   eval "$(bash scripts/local_slurm.sh env)" # PATH with the sacct stand-in first (see below)
#
# `start` is idempotent: running daemons are kept, and restarted only when slurm.conf changes.
#
# No slurmdbd (accounting) is set up, so the real `sacct` answers "accounting storage is
# disabled". submitit asks sacct for the state of the jobs it waits on; without an answer a job
# that dies without writing its result (scancel, out of memory, node failure) leaves the sweep
# waiting forever. scripts/sacct_shim/sacct answers submitit's query from `scontrol show job`
# (which remembers finished jobs for MinJobAge=600 s): put its folder first on PATH (the `env`
# command prints that line; .ci/run and tests/test_slurm.py do it). A cluster with slurmdbd
# needs no stand-in.
#
# Environment: SLURM_PARTITION (default debug), SLURM_CRED_EXPIRE (default 10 s: also how long a
# requeued job waits before it may start again; SLURM's default is 120 s), SLURM_CLEAN=1 (start
# with an empty job state), SLURM_TWONODE=0 (no `twonode` partition).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PARTITION=${SLURM_PARTITION:-debug}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-10}
CONF=/etc/slurm/slurm.conf
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
LOGDIR=/var/log/slurm
# shellcheck source=scripts/local_slurm_nodes.sh
. "$HERE/local_slurm_nodes.sh"

say() { echo "local_slurm: $*"; }
die() { echo "local_slurm: $*" >&2; exit 1; }

# alive PIDFILE NAME: the file names a live, non-zombie process called NAME (stale pid files and
# zombies, which this machine's init reaps lazily, do not count)
alive() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

stop_daemon() {  # PIDFILE NAME: TERM, wait up to 10 s, then KILL
  if alive "$1" "$2"; then
    local pid
    pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$1" "$2" || break; sleep 0.1; done
    if alive "$1" "$2"; then
      say "$2 ($pid) ignored TERM: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $2 ($pid)"
  fi
  rm -f "$1"
}

cancel_all_jobs() {
  # stopping slurmd does not end running jobs (their slurmstepd lives on): cancel them first
  alive "$CTLD_PID" slurmctld || return 0
  local jobs
  jobs=$(squeue -h -o %A 2>/dev/null || true)
  [ -n "$jobs" ] || return 0
  # shellcheck disable=SC2086
  scancel $jobs 2>/dev/null || true
  for _ in $(seq 1 60); do
    [ -z "$(squeue -h -t PD,R,CG,S,CF,RQ,RS,RH -o %A 2>/dev/null)" ] && break
    sleep 0.5
  done
  say "cancelled jobs: $(echo $jobs | tr '\n' ' ')"
}

status() {
  sinfo 2>/dev/null || echo "sinfo: no answer from slurmctld"
  squeue 2>/dev/null || true
  local entry
  for entry in "$MUNGE_PID munged" "$CTLD_PID slurmctld" "$SLURMD_PID slurmd"; do
    set -- $entry
    if alive "$1" "$2"; then echo "$2: running, pid $(cat "$1")"; else echo "$2: not running"; fi
  done
  nodes_status
}

install_packages() {
  local missing="" pkgs=""
  for cmd in slurmctld slurmd munged sbatch; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing="$missing $cmd"
  done
  [ -z "$missing" ] || pkgs="slurmctld slurmd slurm-client munge"
  # `ip` makes the twonode partition's network; without it only that partition is missing
  if ! command -v ip >/dev/null 2>&1 && [ "${SLURM_TWONODE:-1}" = 1 ]; then
    missing="$missing ip"
    pkgs="$pkgs iproute2"
  fi
  [ -z "$missing" ] && return 0
  if ! command -v apt-get >/dev/null; then
    [ "$missing" = " ip" ] && return 0  # the one-node cluster needs no `ip`; start says why twonode is missing
    die "missing$missing and no apt-get here: install SLURM and munge yourself"
  fi
  say "installing$pkgs (missing:$missing)"
  export DEBIAN_FRONTEND=noninteractive
  # refresh the package lists only when they do not know the packages (a fresh machine or container)
  if ! apt-get install -y -qq --no-install-recommends $pkgs >/dev/null 2>&1; then
    apt-get update -qq || true
    if ! apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; then
      [ "$missing" = " ip" ] && return 0  # as without apt-get: only twonode is missing
      die "apt-get could not install$pkgs"
    fi
  fi
  # the packages' postinst try to start the services; where a policy allows it (systemd hosts)
  # we take over: slurmd and slurmctld without /etc/slurm/slurm.conf do not start anyway
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then  # Debian's postinst normally creates it
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge        # /run is a tmpfs: recreated after every boot
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  if ! alive "$MUNGE_PID" munged; then
    runuser -u munge -- /usr/sbin/munged                  # as root it refuses: "PRNG seed dir is insecure"
  fi
  for _ in $(seq 1 50); do
    munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munge does not work (munge -n | unmunge fails); see /var/log/munge/munged.log"
}

node_resources() {  # sets NCPU and REAL_MEM from what slurmd detects (over-declaring drains the node)
  local detected
  detected=$(/usr/sbin/slurmd -C 2>/dev/null | head -1 || true)
  NCPU=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$detected")
  local slurmd_mem
  slurmd_mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$detected")
  [ -n "$NCPU" ] || NCPU=$(nproc)
  REAL_MEM=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  if [ -n "$slurmd_mem" ] && [ "$slurmd_mem" -lt "$REAL_MEM" ]; then REAL_MEM=$slurmd_mem; fi
}

write_config() {  # writes slurm.conf (and the nodes'); restarts the daemons whose configuration changed
  node_resources
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"
  local new
  new=$(mktemp)
  cat >"$new" <<EOF
# written by partdistill's scripts/local_slurm.sh: a one-node cluster on localhost
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also the delay before a requeued job may start again (SLURM's default: 120 s)
AuthInfo=cred_expire=${CRED_EXPIRE}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOGDIR}/slurmctld.log
SlurmdLogFile=${LOGDIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ReturnToService=2
JobRequeue=1
# refuse at submission (instead of leaving PENDING forever) what no node can ever run
EnforcePartLimits=ALL
KillWait=5
# finished jobs stay visible to scontrol (and so to scripts/sacct_shim) this long
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
EOF
  # the two nodes come first: slurmctld 22.05 takes any node name for the first node when that one
  # is called localhost, and so refuses a second node after it ("Duplicated NodeHostName pdnode1")
  [ -n "$TWONODE_WHY" ] || nodes_conf_lines "$NCPU" >>"$new"
  cat >>"$new" <<EOF
NodeName=localhost NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=${REAL_MEM} State=UNKNOWN
PartitionName=${PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  [ -n "$TWONODE_WHY" ] || nodes_partition_line >>"$new"
  local nodes_changed=1
  if [ -z "$TWONODE_WHY" ]; then
    nodes_etc <"$new" && nodes_changed=0
  fi
  if cmp -s "$new" "$CONF"; then
    rm -f "$new"
    [ "$nodes_changed" = 1 ] || stop_node_slurmds
  else
    stop_node_slurmds                         # running daemons would keep the old configuration
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$CTLD_PID" slurmctld
    mv "$new" "$CONF"
    chmod 0644 "$CONF"
    say "wrote $CONF (CPUs=$NCPU RealMemory=${REAL_MEM}M partition=$PARTITION)"
  fi
}

wait_idle() {
  local state="" _
  for _ in $(seq 1 120); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null | head -1 || true)
    case "$state" in
      idle | mixed | allocated | completing) return 0 ;;
      down* | drain* | fail* | inval*)  # e.g. left drained by an earlier run: ReturnToService covers reboots
        scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  echo "local_slurm: the node did not become idle (state '$state');" \
    "see $LOGDIR/slurmctld.log and $LOGDIR/slurmd.log" >&2
  scontrol show node localhost >&2 || true
  return 1
}

start() {
  [ "$(id -u)" = 0 ] || die "start needs root (it installs packages and runs the SLURM daemons); nothing was started"
  local t0
  t0=$(date +%s.%N)
  install_packages
  start_munge
  TWONODE_WHY=$(nodes_why_not)
  if [ -z "$TWONODE_WHY" ]; then
    local out
    out=$(nodes_network 2>&1) || TWONODE_WHY="making its network failed: $out"
  fi
  write_config
  local clean=""
  [ "${SLURM_CLEAN:-0}" = 1 ] && clean="-c"
  alive "$CTLD_PID" slurmctld || /usr/sbin/slurmctld $clean           # both daemonize
  alive "$SLURMD_PID" slurmd || /usr/sbin/slurmd $clean -N localhost  # one slurmd per node name and pid file
  [ -n "$TWONODE_WHY" ] || TWONODE_WHY=$(start_node_slurmds $clean) || true
  wait_idle
  [ -n "$TWONODE_WHY" ] || TWONODE_WHY=$(wait_nodes_idle) || true
  mkdir -p "$(dirname "$NODES_STATUS")"
  if [ -z "$TWONODE_WHY" ]; then
    echo up >"$NODES_STATUS"
  else
    echo "missing: $TWONODE_WHY" >"$NODES_STATUS"
    say "no $NODES_PARTITION partition (pdnode1, pdnode2): $TWONODE_WHY"
  fi
  sinfo
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "local_slurm: up in %.1f s\n", b - a }'
  echo "local_slurm: put the sacct stand-in first on PATH: export PATH=$HERE/sacct_shim:\$PATH"
}

stop() {
  [ "$(id -u)" = 0 ] || die "stop needs root"
  cancel_all_jobs
  remove_nodes                         # their slurmd, leftover processes, namespaces, interfaces, files
  stop_daemon "$SLURMD_PID" slurmd
  stop_daemon "$CTLD_PID" slurmctld    # saves its state on TERM
  stop_daemon "$MUNGE_PID" munged
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export PATH=$HERE/sacct_shim:\$PATH" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
