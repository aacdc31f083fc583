#!/bin/bash
# .ci/slurm-down.sh: stop what .ci/slurm-up.sh started, by PID file (never by name). Idempotent.
alive() { local p; p=$(cat "$1" 2>/dev/null) && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ]; }
if alive /run/slurmctld.pid slurmctld; then
  # End the jobs first, so that no training process outlives the cluster.
  scancel --user="$(id -un)" || true
  for _ in $(seq 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
fi
pids=()
for pf in /run/slurmd.pid:slurmd /run/slurmctld.pid:slurmctld /run/munge/munged.pid:munged; do
  if alive "${pf%%:*}" "${pf##*:}"; then p=$(cat "${pf%%:*}"); kill "$p"; pids+=("$p"); fi
done
for p in "${pids[@]}"; do
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
done
exit 0
