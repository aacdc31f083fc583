#!/bin/bash
# .ci/slurm-up.sh [--two-nodes]: a test Slurm (Debian 12's 22.05 packages) for tests/slurm.
# Installs the packages when missing, starts munged, slurmctld and slurmd, and waits for the nodes.
# Idempotent; needs root. Recipe and pitfalls: /work/shared/design/SLURM.md.
#
# One-node mode (default): node $(hostname -s) on 127.0.0.1, partitions "debug" and "high".
# --two-nodes adds nodes iuqn1 and iuqn2, each a slurmd in its own network namespace (and UTS
# namespace: its own host name) on a private bridge, partitions "pair" and "pairhigh":
#
#   root namespace: bridge iuqbr0 10.77.0.1/24, slurmctld (SlurmctldHost on 10.77.0.1), node vm
#   netns iuqn1:    iuq0 10.77.0.11/24 (veth to iuqn1-h on the bridge), slurmd -N iuqn1
#   netns iuqn2:    iuq0 10.77.0.12/24 (veth to iuqn2-h on the bridge), slurmd -N iuqn2
#
# The namespaces have no default route and forwarding stays off, so their traffic cannot leave
# 10.77.0.0/24. They share the file system, hence munged's socket and the test folders; each
# slurmd has its own mount namespace where /etc/netns/<ns>/hosts is bind-mounted over /etc/hosts
# (as `ip netns exec` does), so iuqn1, iuqn2 and vm resolve on both. Two-node mode is a superset
# of one-node mode: asked for one node while two run, this leaves them running. Switching from one
# to two restarts slurmctld (its address changes).
# .ci/slurm-down.sh stops everything by PID and removes the namespaces, links and files.
#
# Exit status 2: the packages could not be installed; 3: this machine already has a slurm.conf
# that we did not write, which is left alone; 4: the network namespaces could not be made.
set -euo pipefail
MARK="# written by iuq_d2 .ci/slurm-up.sh"
CONF=/etc/slurm/slurm.conf
NETNS_NODES=(iuqn1 iuqn2)
BRIDGE=iuqbr0
SUBNET=10.77.0
want=one
case "${1:-}" in
  "") ;;
  --two-nodes) want=two ;;
  *) echo "usage: $0 [--two-nodes]" >&2; exit 64 ;;
esac

if [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
  echo "$CONF exists and was not written by this script: not touching a real Slurm" >&2
  exit 3
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; } || {
    echo "could not install slurmctld slurmd slurm-client munge with apt-get" >&2
    exit 2
  }
fi

# True when the PID file names a live process with that command name.
alive() { local p; p=$(cat "$1" 2>/dev/null) && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ]; }
# Stop the process of a PID file, if alive, and wait for it to end.
stop() {
  alive "$1" "$2" || return 0
  local p; p=$(cat "$1"); kill "$p"
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
}

# munged refuses to run as root and needs its socket folder, which systemd would have made.
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 0600 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
alive /run/munge/munged.pid munged || runuser -u munge -- /usr/sbin/munged

# The mode of the running cluster, from the conf that started it.
have=$(sed -n 's/^# mode: //p' "$CONF" 2>/dev/null || true)
if [ "$want" = one ] && [ "$have" = two ] && alive /run/slurmctld.pid slurmctld; then
  want=two
fi

# The private network of two-node mode; each step is skipped when already done.
netns_up() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  [[ "$(ip addr show dev "$BRIDGE")" == *"inet $SUBNET.1/24"* ]] || ip addr add "$SUBNET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local i=0 ns
  for ns in "${NETNS_NODES[@]}"; do
    i=$((i + 1))
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    if ! ip link show "$ns-h" >/dev/null 2>&1; then
      ip link add "$ns-h" type veth peer name iuq0 netns "$ns"
    fi
    ip link set "$ns-h" master "$BRIDGE" up
    ip -n "$ns" link set lo up
    [[ "$(ip -n "$ns" addr show dev iuq0)" == *"inet $SUBNET.1$i/24"* ]] ||
      ip -n "$ns" addr add "$SUBNET.1$i/24" dev iuq0
    ip -n "$ns" link set iuq0 up
    mkdir -p "/etc/netns/$ns"
    {
      echo "127.0.0.1 localhost"
      echo "$SUBNET.1 $H"
      local j=0 other
      for other in "${NETNS_NODES[@]}"; do j=$((j + 1)); echo "$SUBNET.1$j $other"; done
    } > "/etc/netns/$ns/hosts"
  done
}

H=$(hostname -s)
if [ "$want" = two ]; then
  # (set -e does not reach into a function called as `f || ...`: trap the first failure instead)
  trap 'echo "could not create the network namespaces of --two-nodes" >&2; exit 4' ERR
  set -E
  netns_up
  set +E
  trap - ERR
  CTLD_ADDR=$SUBNET.1
else
  CTLD_ADDR=127.0.0.1
fi
# "NodeName=<host> CPUs=2 ... RealMemory=..." as slurmd sees this machine; more would drain it.
NODE=$(slurmd -C | sed -n 1p)
HW=${NODE#NodeName=* }
mkdir -p /etc/slurm /var/spool/slurm/ctld /var/log/slurm
for n in "$H" "${NETNS_NODES[@]}"; do mkdir -p "/var/spool/slurm/d/$n"; done
# cred_expire=5 and 1 s scheduler cycles: a requeued job reruns after ~7 s instead of ~2 min.
# partitions "high"/"pairhigh" and the Preempt lines exist for the preemption tests;
# preempt_send_user_signal makes Slurm send the job's USR2 (submitit's checkpoint signal) when it
# preempts it. %n: each slurmd has its own spool, PID and log file.
{
  cat <<CONF
$MARK
# mode: $want
ClusterName=ci
SlurmctldHost=$H($CTLD_ADDR)
SlurmUser=root
AuthInfo=cred_expire=5
StateSaveLocation=/var/spool/slurm/ctld
SlurmdSpoolDir=/var/spool/slurm/d/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1,bf_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
EnforcePartLimits=ALL
KillWait=5
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=20
PartitionName=high Nodes=$H MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
CONF
  if [ "$want" = two ]; then
    i=0
    for n in "${NETNS_NODES[@]}"; do
      i=$((i + 1))
      echo "NodeName=$n NodeHostname=$n NodeAddr=$SUBNET.1$i $HW State=UNKNOWN"
    done
    nodes=$(IFS=,; echo "${NETNS_NODES[*]}")
    echo "PartitionName=pair Nodes=$nodes MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=20"
    echo "PartitionName=pairhigh Nodes=$nodes MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF"
  fi
} > "$CONF.new"
mv "$CONF.new" "$CONF"

# A changed mode changes slurmctld's address: restart it (and the slurmd that knows the old one).
if [ -n "$have" ] && [ "$have" != "$want" ]; then
  stop "/run/slurmd-$H.pid" slurmd
  stop /run/slurmctld.pid slurmctld
fi
stop /run/slurmd.pid slurmd  # the PID file of older versions of this script
# -c: start from an empty state (job ids restart at 1, hence a fresh submitit folder per run).
if alive /run/slurmctld.pid slurmctld; then scontrol reconfigure; else /usr/sbin/slurmctld -c; fi
alive "/run/slurmd-$H.pid" slurmd || /usr/sbin/slurmd -N "$H"
nodes=("$H")
if [ "$want" = two ]; then
  for n in "${NETNS_NODES[@]}"; do
    # Its own network, host name and /etc/hosts; slurmd daemonizes, its jobs inherit all three.
    # Not `ip netns exec`: that remounts /sys, which hides the cgroup mounts slurmd requires.
    alive "/run/slurmd-$n.pid" slurmd ||
      nsenter --net="/run/netns/$n" unshare --uts --mount --propagation slave sh -c \
        "mount --bind /etc/netns/$n/hosts /etc/hosts && hostname $n && exec /usr/sbin/slurmd -N $n"
    nodes+=("$n")
  done
fi
for _ in $(seq 60); do
  ready=0
  for n in "${nodes[@]}"; do
    case "$(sinfo -h -n "$n" -o %T 2>/dev/null)" in idle | mixed | allocated) ready=$((ready + 1)) ;; esac
  done
  [ "$ready" = "${#nodes[@]}" ] && exit 0
  sleep 0.5
done
echo "slurm did not come up ($want mode)" >&2
sinfo -N >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd-*.log >&2
exit 1
