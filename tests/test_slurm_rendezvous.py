"""The Slurm launcher without Slurm: hostlists, the rendezvous table, requeue arguments, dry run."""

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from iuq_d2.engine.cpu_threads import threads_per_process
from iuq_d2.engine.slurm.node import SlurmTrainJob
from iuq_d2.engine.slurm.rendezvous import (
    PORT_BASE,
    PORT_SPAN,
    Rendezvous,
    default_port,
    expand_hostlist,
    rendezvous,
)
from iuq_d2.engine.slurm.submit import main

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("vm", ["vm"]),
        ("node7", ["node7"]),
        ("a,b", ["a", "b"]),
        ("gpu[01-03,7],cpu-a", ["gpu01", "gpu02", "gpu03", "gpu7", "cpu-a"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
        ("gpu-[1-2]-ib,login", ["gpu-1-ib", "gpu-2-ib", "login"]),
        ("x[5]", ["x5"]),
    ],
)
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize(
    "hostlist", ["", "a,,b", "gpu[1-3", "gpu1-3]", "g[[1]]", "g[3-1]", "g[a-b]", "g[]"]
)
def test_expand_hostlist_rejects_malformed(hostlist):
    with pytest.raises(ValueError):
        expand_hostlist(hostlist)


def _env(job_id="1234", nodelist="vm", num_nodes="1", node_id="0", **extra):
    env = {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_JOB_NUM_NODES": num_nodes,
        "SLURM_NODEID": node_id,
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


ODD = "gpu[01-03,7],cpu-a"


@pytest.mark.parametrize(
    "env, port, expected",
    [
        (_env(), None, Rendezvous(1, 0, "tcp://vm:21234")),
        # 4 nodes: every node gets the same URL, its own rank.
        (_env(nodelist="n[1-4]", num_nodes="4"), None, Rendezvous(4, 0, "tcp://n1:21234")),
        (
            _env(nodelist="n[1-4]", num_nodes="4", node_id="3"),
            None,
            Rendezvous(4, 3, "tcp://n1:21234"),
        ),
        (
            _env(job_id="987654", nodelist=ODD, num_nodes="5", node_id="3"),
            None,
            Rendezvous(5, 3, "tcp://gpu01:27654"),
        ),
        (
            _env(job_id="987654", nodelist=ODD, num_nodes="5", node_id="4"),
            29500,
            Rendezvous(5, 4, "tcp://gpu01:29500"),
        ),
        # Slurm before 20.x only sets the old names.
        (
            dict(SLURM_JOB_ID="1234", SLURM_NODELIST="c[3-4]", SLURM_NNODES="2", SLURM_NODEID="1"),
            None,
            Rendezvous(2, 1, "tcp://c3:21234"),
        ),
        # The node count is optional: the node list alone gives it.
        (
            _env(nodelist="c[3-4]", num_nodes=None, node_id="1"),
            None,
            Rendezvous(2, 1, "tcp://c3:21234"),
        ),
    ],
)
def test_rendezvous_table(env, port, expected):
    assert rendezvous(env, port) == expected


def test_rendezvous_argv_for_train_net():
    assert Rendezvous(4, 2, "tcp://gpu01:21234").argv() == [
        "--num-machines", "4", "--machine-rank", "2", "--dist-url", "tcp://gpu01:21234",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "env",
    [
        {},  # not in a job at all
        _env(job_id=None),
        _env(node_id=None),
        _env(nodelist=None),
        _env(nodelist="node[1-4]", num_nodes="3"),  # count and list disagree
        _env(nodelist="node[1-4]", num_nodes="4", node_id="4"),  # rank past the end
        _env(job_id="12_3"),  # not a number: no port can be derived
    ],
)
def test_rendezvous_rejects_inconsistent_env(env):
    with pytest.raises(ValueError):
        rendezvous(env)


def test_rendezvous_rejects_bad_port():
    with pytest.raises(ValueError):
        rendezvous(_env(), port=70000)


def test_default_port_range_and_determinism():
    ports = [default_port(str(i)) for i in range(0, 3 * PORT_SPAN, 7)]
    assert all(PORT_BASE <= p < PORT_BASE + PORT_SPAN for p in ports)
    assert default_port("41") == default_port("41") == PORT_BASE + 41
    # Jobs less than PORT_SPAN apart never share a port.
    assert len({default_port(str(i)) for i in range(500, 500 + PORT_SPAN)}) == PORT_SPAN


class _Worker:
    killed = False

    def kill(self):
        self.killed = True


def test_checkpoint_requeues_with_resume_once_and_stops_the_workers(monkeypatch):
    workers = [_Worker(), _Worker()]
    monkeypatch.setattr(multiprocessing, "active_children", lambda: workers)
    argv = ["--config-file", "a.yaml", "SOLVER.MAX_ITER", "10"]
    job = SlurmTrainJob(argv, {"GLOO_SOCKET_IFNAME": "lo"}, 29500)
    first = job.checkpoint()
    assert all(w.killed for w in workers)
    again = first.function.checkpoint()
    for delayed in (first, again):
        requeued = delayed.function
        assert isinstance(requeued, SlurmTrainJob)
        # Before the config overrides, which take every token after them.
        assert requeued.train_argv == ["--resume", *argv]
        assert requeued.env == {"GLOO_SOCKET_IFNAME": "lo"} and requeued.port == 29500
        assert delayed.args == () and delayed.kwargs == {}
    assert job.train_argv == argv  # the running job's own arguments are untouched


def test_dry_run_prints_and_submits_nothing(tmp_path):
    """Through slurm/submit.py itself, as users call it (it finds the package on its own)."""
    job_dir = tmp_path / "jobs"
    proc = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "slurm" / "submit.py"), "--dry-run", "--nodes", "4",
            "--gpus-per-node", "8", "--cpus-per-task", "32", "--mem", "200", "--partition", "gpu",
            "--timeout", "120", "--account", "acc", "--qos", "high", "--constraint", "a100",
            "--comment", "iuq run", "--port", "29511", "--nccl-socket-ifname", "ib0",
            "--gloo-socket-ifname", "eth0", "--job-dir", str(job_dir),
            "--", "--config-file", "configs/x.yaml", "SOLVER.MAX_ITER", "100",
        ],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "nothing submitted" in out
    for expected in (
        '"nodes": 4', '"gpus_per_node": 8', '"tasks_per_node": 1', '"cpus_per_task": 32',
        '"mem_gb": 200.0', '"slurm_partition": "gpu"', '"timeout_min": 120',
        '"slurm_account": "acc"', '"slurm_qos": "high"', '"slurm_constraint": "a100"',
        '"slurm_comment": "iuq run"', "NCCL_SOCKET_IFNAME=ib0", "GLOO_SOCKET_IFNAME=eth0",
        f"submitit folder: {job_dir}/%j", f"export PYTHONPATH={REPO_ROOT}",
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}",
        "--num-machines 4 --machine-rank '<SLURM_NODEID>' "
        "--dist-url 'tcp://<first host of SLURM_JOB_NODELIST>:29511' "
        "--num-gpus 8 --config-file configs/x.yaml SOLVER.MAX_ITER 100",
    ):  # fmt: skip
        assert expected in out, (expected, out)
    assert not job_dir.exists()


@pytest.mark.parametrize("option", ["--num-machines", "--machine-rank", "--dist-url=tcp://a:1"])
def test_derived_options_are_refused(option, capsys):
    argv = [option] if "=" in option else [option, "1"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--dry-run", "--", *argv])
    assert exit_info.value.code == 2
    assert "derived from Slurm" in capsys.readouterr().err


def test_train_net_arguments_are_checked_before_submitting(capsys):
    with pytest.raises(SystemExit):
        main(["--dry-run", "--", "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_cpu_nodes_default_to_one_process_and_keep_explicit_num_gpus(capsys):
    main(["--dry-run", "--gpus-per-node", "0", "--job-dir", "jobs/%j/x"])
    out = capsys.readouterr().out
    assert "gpus_per_node" not in out and "--num-gpus 1" in out and "jobs/%j/x" in out
    main(["--dry-run", "--gpus-per-node", "0", "--", "--num-gpus", "2"])
    out = capsys.readouterr().out
    assert out.count("--num-gpus") == 1 and "--num-gpus 2" in out


@pytest.mark.parametrize(
    "cpus, processes, threads", [(64, 8, 8), (2, 2, 1), (3, 8, 1), (4, 0, 4), (None, 8, None)]
)
def test_threads_per_process(cpus, processes, threads):
    assert threads_per_process(cpus, processes) == threads


def test_threads_per_process_leaves_the_loader_workers_their_cores():
    assert threads_per_process(32, 2, num_workers=4) == 12
    assert threads_per_process(2, 1, num_workers=2) == 1
