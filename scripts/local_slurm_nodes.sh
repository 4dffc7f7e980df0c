# shellcheck shell=bash
# Sourced by scripts/local_slurm.sh: the `twonode` partition, two more compute nodes on this machine.
#
# Each node is a network namespace (pdnode1, pdnode2) with its own address on a bridge (the host's
# side is 10.77.0.1/24, the nodes 10.77.0.11 and 10.77.0.12) and its own hostname (a UTS namespace),
# running a real slurmd. So a job of 2 nodes sees what it sees on a real cluster: two hostnames that
# resolve to two addresses, the first node's name as MASTER_ADDR, gloo binding the address its
# hostname resolves to, srun and slurmstepd traffic between addresses.
#
# A node's slurmd (and so its jobs) runs in a mount namespace of its own where /etc/netns/<node>/*
# is mounted over /etc/* (the convention of `ip netns exec`): its hosts file (the nodes' names and
# addresses) and its slurm/ folder (the cluster's slurm.conf with this node's own pid file, spool
# folder and log, and the controller's address on the bridge, since `localhost` there is the node's
# own loopback). Not `ip netns exec` itself: it also mounts a fresh /sys, without the cgroup
# folders slurmd needs ("Unable to initialize cgroup plugin"). munged's socket is a file in
# /run/munge, shared by every network namespace.
#
# Not SLURM's multiple-slurmd mode (several slurmd on one address, a Port each): there every node
# has the same address and hostname, so a multi-node job would not exercise what differs between
# real nodes (MASTER_ADDR's resolution, gloo's choice of address, traffic between addresses).

NODES_NET=10.77.0
NODES_BRIDGE=pdbr0
NODES="pdnode1 pdnode2"
NODES_STATUS=/run/local_slurm_twonode   # "up", or why the partition is missing (read by tests/test_slurm_two_nodes.py)
NODES_PARTITION=twonode
NODE_MEM=4000                            # MB each; the nodes share the machine with `localhost`

node_index() { echo "${1#pdnode}"; }
node_addr() { echo "$NODES_NET.1$(node_index "$1")"; }
node_pidfile() { echo "/run/slurmd-$1.pid"; }
node_etc() { echo "/etc/netns/$1"; }

nodes_why_not() {  # prints why the nodes cannot be made here, or nothing
  [ "${SLURM_TWONODE:-1}" = 1 ] || { echo "SLURM_TWONODE=${SLURM_TWONODE} turned it off"; return; }
  command -v ip >/dev/null || { echo "no \`ip\` (Debian package iproute2) and it could not be installed"; return; }
  if ! command -v unshare >/dev/null || ! command -v nsenter >/dev/null; then
    echo "no \`unshare\` or \`nsenter\` (util-linux)"; return
  fi
  local out
  if ! out=$(ip link add pdtestbr0 type bridge 2>&1); then
    echo "cannot create network interfaces here (ip link add: ${out})"; return
  fi
  ip link del pdtestbr0 2>/dev/null || true
}

nodes_network() {  # the bridge, one namespace and veth pair per node; idempotent. Fails with ip's message
  if ! ip link show "$NODES_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODES_BRIDGE" type bridge
  fi
  ip addr replace "$NODES_NET.1/24" dev "$NODES_BRIDGE"
  ip link set "$NODES_BRIDGE" up
  local node veth
  for node in $NODES; do
    veth="pdveth$(node_index "$node")"
    [ -e "/run/netns/$node" ] || ip netns add "$node"
    if ! ip link show "$veth" >/dev/null 2>&1; then
      ip -n "$node" link del eth0 2>/dev/null || true   # a half-made pair from an interrupted start
      ip link add "$veth" type veth peer name eth0 netns "$node"
    fi
    ip link set "$veth" master "$NODES_BRIDGE" up
    ip -n "$node" addr replace "$(node_addr "$node")/24" dev eth0
    ip -n "$node" link set eth0 up
    ip -n "$node" link set lo up
  done
}

nodes_etc() {  # the main slurm.conf's text on stdin: writes each node's hosts and slurm.conf
  # returns 0 when a node's slurm.conf changed (its slurmd must restart), 1 otherwise
  local main node etc new changed=1
  main=$(cat)
  for node in $NODES; do
    etc=$(node_etc "$node")
    mkdir -p "$etc/slurm" "/var/spool/slurmd-$node"
    new=$(mktemp)  # not in $etc: whatever lies there is mounted over /etc inside the node
    {
      echo "# written by partdistill's scripts/local_slurm.sh: the names inside node $node"
      echo "127.0.0.1 localhost"
      for other in $NODES; do echo "$(node_addr "$other") $other"; done
    } >"$new"
    cmp -s "$new" "$etc/hosts" || install -m 0644 "$new" "$etc/hosts"
    # the same cluster, seen from the node: the controller on the bridge, this node's own local paths
    sed -e "s|^SlurmctldHost=localhost\$|SlurmctldHost=localhost($NODES_NET.1)|" \
        -e "s|^SlurmdPidFile=.*|SlurmdPidFile=$(node_pidfile "$node")|" \
        -e "s|^SlurmdSpoolDir=.*|SlurmdSpoolDir=/var/spool/slurmd-$node|" \
        -e "s|^SlurmdLogFile=.*|SlurmdLogFile=$LOGDIR/slurmd-$node.log|" <<<"$main" >"$new"
    if ! cmp -s "$new" "$etc/slurm/slurm.conf"; then
      install -m 0644 "$new" "$etc/slurm/slurm.conf"
      changed=0
    fi
    rm -f "$new"
  done
  return $changed
}

nodes_conf_lines() {  # ARGS: CPUs. The main slurm.conf's lines for the nodes
  local node cpus=$1 mem=$NODE_MEM
  [ "$REAL_MEM" -lt "$mem" ] && mem=$REAL_MEM
  echo "# twonode's nodes, each in a network namespace (scripts/local_slurm_nodes.sh). Their own slurm.conf"
  echo "# (/etc/netns/<node>/slurm) differ from this one in local paths and the controller's address"
  echo "DebugFlags=NO_CONF_HASH"
  for node in $NODES; do
    echo "NodeName=$node NodeAddr=$(node_addr "$node") CPUs=$cpus RealMemory=$mem State=UNKNOWN"
  done
}

nodes_partition_line() {
  echo "PartitionName=$NODES_PARTITION Nodes=${NODES// /,} Default=NO MaxTime=INFINITE State=UP OverSubscribe=NO"
}

start_node_slurmds() {  # ARGS: extra slurmd flags (-c). Says which did not start and returns 1 then
  local node failed=""
  for node in $NODES; do
    alive "$(node_pidfile "$node")" slurmd && continue
    # its own network, hostname (UTS) and /etc files (mount namespace, still receiving the host's
    # later mounts); slurmd daemonizes and stays in them, and so do its jobs
    local etc
    etc=$(node_etc "$node")
    nsenter --net="/run/netns/$node" unshare --mount --propagation slave --uts sh -c \
      "mount --bind $etc/hosts /etc/hosts && mount --bind $etc/slurm /etc/slurm && hostname $node &&
       exec /usr/sbin/slurmd $* -N $node" >&2 || failed="$failed $node"
  done
  [ -z "$failed" ] || { echo "slurmd did not start on$failed: see $LOGDIR/slurmd-<node>.log"; return 1; }
}

stop_node_slurmds() {
  local node
  for node in $NODES; do stop_daemon "$(node_pidfile "$node")" slurmd; done
}

wait_nodes_idle() {  # returns 1 (and says why) when a node is not up within 30 s
  local node state="" _
  for node in $NODES; do
    for _ in $(seq 1 60); do
      state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -1 || true)
      # slurmctld goes on calling a node idle a while after its slurmd ended: that must run too
      alive "$(node_pidfile "$node")" slurmd || state="slurmd not running"
      case "$state" in
        idle | mixed | allocated | completing) break ;;
        down* | drain* | fail* | inval*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
      esac
      sleep 0.5
    done
    case "$state" in
      idle | mixed | allocated | completing) ;;
      *) echo "node $node is '$state', not idle, after 30 s: see $LOGDIR/slurmd-$node.log and" \
           "$LOGDIR/slurmctld.log"; return 1 ;;
    esac
  done
}

remove_nodes() {  # stop: every process left in the namespaces, the namespaces, interfaces and files
  local node pids
  stop_node_slurmds
  for node in $NODES; do
    if [ -e "/run/netns/$node" ]; then
      pids=$(ip netns pids "$node" 2>/dev/null || true)   # jobs' processes the cancel did not end
      # shellcheck disable=SC2086
      if [ -n "$pids" ]; then
        kill -KILL $pids 2>/dev/null || true
        say "killed processes left in $node: ${pids//$'\n'/ }"
      fi
      ip netns del "$node" && say "removed network namespace $node"
    fi
    ip link del "pdveth$(node_index "$node")" 2>/dev/null || true
    rm -rf "$(node_etc "$node")"
  done
  if ip link show "$NODES_BRIDGE" >/dev/null 2>&1; then
    ip link del "$NODES_BRIDGE" && say "removed bridge $NODES_BRIDGE"
  fi
  rmdir /etc/netns 2>/dev/null || true  # only when empty: other tools keep files there too
  rm -f "$NODES_STATUS"
}

nodes_status() {
  local node
  [ -f "$NODES_STATUS" ] && echo "$NODES_PARTITION partition: $(cat "$NODES_STATUS")"
  for node in $NODES; do
    if alive "$(node_pidfile "$node")" slurmd; then
      echo "slurmd $node: running, pid $(cat "$(node_pidfile "$node")"), address $(node_addr "$node") (network namespace $node)"
    elif [ -e "/run/netns/$node" ]; then
      echo "slurmd $node: not running (network namespace $node exists)"
    fi
  done
}
