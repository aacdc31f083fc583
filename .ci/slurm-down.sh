#!/bin/bash
# .ci/slurm-down.sh: stop what .ci/slurm-up.sh started, by PID file (never by name), and remove
# the network namespaces, links and files of its two-node mode. Idempotent.
NETNS_NODES=(iuqn1 iuqn2)
BRIDGE=iuqbr0
alive() { local p; p=$(cat "$1" 2>/dev/null) && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ]; }
wait_gone() {
  local p
  for p in "$@"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
}
if alive /run/slurmctld.pid slurmctld; then
  # End the jobs first, so that no training process outlives the cluster.
  scancel --user="$(id -un)" || true
  for _ in $(seq 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
fi
pids=()
for pf in /run/slurmd-*.pid /run/slurmd.pid; do
  if alive "$pf" slurmd; then p=$(cat "$pf"); kill "$p"; pids+=("$p"); fi
done
wait_gone "${pids[@]}"
pids=()
for pf in /run/slurmctld.pid:slurmctld /run/munge/munged.pid:munged; do
  if alive "${pf%%:*}" "${pf##*:}"; then p=$(cat "${pf%%:*}"); kill "$p"; pids+=("$p"); fi
done
# Whatever still runs inside our namespaces was started by their slurmd: end it by PID.
for ns in "${NETNS_NODES[@]}"; do
  [ -e "/run/netns/$ns" ] || continue
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null && pids+=("$p"); done
done
wait_gone "${pids[@]}"
for ns in "${NETNS_NODES[@]}"; do
  [ -e "/run/netns/$ns" ] && ip netns del "$ns"  # its end of the veth pair goes with it
  ip link show "$ns-h" >/dev/null 2>&1 && ip link del "$ns-h"
  rm -rf "/etc/netns/$ns"
done
rmdir /etc/netns 2>/dev/null
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
exit 0
