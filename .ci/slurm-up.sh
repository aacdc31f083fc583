#!/bin/bash
# .ci/slurm-up.sh: a one-node Slurm (Debian 12's 22.05 packages) on 127.0.0.1 for the tests in
# tests/slurm. Installs the packages when missing, starts munged, slurmctld and slurmd, and waits
# for the node. Idempotent; needs root. Recipe and pitfalls: /work/shared/design/SLURM.md.
# Exit status 2: the packages could not be installed; 3: this machine already has a slurm.conf
# that we did not write, which is left alone.
set -euo pipefail
MARK="# written by iuq_d2 .ci/slurm-up.sh"
CONF=/etc/slurm/slurm.conf
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

# munged refuses to run as root and needs its socket folder, which systemd would have made.
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 0600 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
alive /run/munge/munged.pid munged || runuser -u munge -- /usr/sbin/munged

H=$(hostname -s)
# "NodeName=<host> CPUs=2 ... RealMemory=..." as slurmd sees this machine; more would drain it.
NODE=$(slurmd -C | sed -n 1p)
mkdir -p /etc/slurm /var/spool/slurm/ctld /var/spool/slurm/d /var/log/slurm
# cred_expire=5 and 1 s scheduler cycles: a requeued job reruns after ~7 s instead of ~2 min.
# partition "high" and the Preempt lines exist for the preemption test; preempt_send_user_signal
# makes Slurm send the job's USR2 (submitit's checkpoint signal) when it preempts it.
cat > "$CONF" <<CONF
$MARK
ClusterName=ci
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
AuthInfo=cred_expire=5
StateSaveLocation=/var/spool/slurm/ctld
SlurmdSpoolDir=/var/spool/slurm/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
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
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=20
PartitionName=high Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
CONF

# -c: start from an empty state (job ids restart at 1, hence a fresh submitit folder per run).
if alive /run/slurmctld.pid slurmctld; then scontrol reconfigure; else /usr/sbin/slurmctld -c; fi
alive /run/slurmd.pid slurmd || /usr/sbin/slurmd
for _ in $(seq 60); do
  case "$(sinfo -h -n "$H" -o %T 2>/dev/null)" in idle | mixed | allocated) exit 0 ;; esac
  sleep 0.5
done
echo "slurm did not come up" >&2
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2
exit 1
