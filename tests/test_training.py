"""End-to-end training through train_net's entry points on small generated datasets:
the loss goes down, --eval-only reproduces the final evaluation, --resume restores the state and
continues from it, and two CPU processes train one model together."""

import json
import os
import re

import cv2
import numpy as np
import pytest
import torch

from iuq_d2.data import ensure_shapes
from iuq_d2.engine import Trainer
from iuq_d2.engine.entry import build_argument_parser, main, run, setup
from iuq_d2.visualize import HEADER_HEIGHT, upscale_factor
from iuq_d2.visualize import main as visualize_main

from .conftest import DEMO_CONFIG, DIST_TIMEOUT_S, REPO, multiprocess

RANK_DUMP = os.path.join(REPO, "tests", "slurm", "rank_dump")


@pytest.fixture(scope="session")
def small_shapes(tmp_path_factory):
    """A 48-image train and a 12-image val split, registered through DATASETS.CUSTOM_COCO."""
    root = tmp_path_factory.mktemp("shapes")
    entries = []
    for name, n, seed in (("small_train", 48, 10), ("small_val", 12, 11)):
        json_file = ensure_shapes(str(root / name), n, seed)
        entries.append([name, json_file, os.path.join(root / name, "images")])
    return entries


def _args(output_dir, small_shapes, *extra, config=DEMO_CONFIG, eval_only=False, resume=False):
    argv = ["--config-file", config]
    argv += ["--eval-only"] if eval_only else []
    argv += ["--resume"] if resume else []
    argv += [
        "DATASETS.CUSTOM_COCO",
        repr(small_shapes),
        "DATASETS.TRAIN",
        "('small_train',)",
        "DATASETS.TEST",
        "('small_val',)",
        "SOLVER.IMS_PER_BATCH",
        "4",
        "SOLVER.WARMUP_ITERS",
        "5",
        "SOLVER.STEPS",
        "()",
        "DATALOADER.NUM_WORKERS",
        "0",
        "OUTPUT_DIR",
        str(output_dir),
        *extra,
    ]
    return build_argument_parser().parse_args(argv)


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if '"total_loss"' in line]


def test_instant_training_loss_goes_down_and_eval_only_reproduces_it(tmp_path, small_shapes):
    out = tmp_path / "run"
    trainer = Trainer(setup(_args(out, small_shapes, "SOLVER.MAX_ITER", "40")))
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert os.path.exists(out / "model_final.pth")

    # The end-of-training evaluation is in the trainer's storage; --eval-only must reproduce it.
    final = trainer.storage.latest()
    again = main(
        _args(
            tmp_path / "eval",
            small_shapes,
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
            eval_only=True,
        )
    )
    flat = {f"{task}/{k}": v for task, metrics in again.items() for k, v in metrics.items()}
    assert {"bbox/AP", "segm/AP", "segm/AP50"} <= set(flat)
    for key, value in flat.items():
        assert final[key][0] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    with open(tmp_path / "eval" / "eval_results.json") as f:
        on_disk = json.load(f)
    assert set(on_disk) == set(again)
    for task, metrics in again.items():
        assert on_disk[task] == pytest.approx(dict(metrics), nan_ok=True), task

    val_images = small_shapes[1][2]
    written = visualize_main(
        [
            "--config-file",
            DEMO_CONFIG,
            "--weights",
            str(out / "model_final.pth"),
            "--input",
            os.path.join(val_images, "000000.png"),
            "--output",
            str(tmp_path / "vis"),
            "--score-threshold",
            "0",
        ]
    )
    drawn = cv2.imread(written[0])[HEADER_HEIGHT:]  # a plain image: the prediction alone
    source = cv2.imread(os.path.join(val_images, "000000.png"))
    scale = upscale_factor(*source.shape[:2])
    size = (source.shape[1] * scale, source.shape[0] * scale)
    upscaled = cv2.resize(source, size, interpolation=cv2.INTER_LINEAR)
    assert drawn.shape == upscaled.shape and not np.array_equal(drawn, upscaled)


def test_resume_restores_iteration_optimizer_and_scheduler(tmp_path, small_shapes):
    out = tmp_path / "run"
    extra = (
        "SOLVER.MAX_ITER",
        "12",
        "SOLVER.CHECKPOINT_PERIOD",
        "6",
        "SOLVER.STEPS",
        "(8,)",
        "TEST.EVAL_PERIOD",
        "0",
        "MODEL.META_ARCHITECTURE",
        "IUQCondInst",
        "INPUT.DATASET_MAPPER_NAME",
        "iuq",
        "MODEL.IUQ.EQUI.ENABLED",
        "True",
    )
    main(_args(out, small_shapes, *extra, "DATASETS.TEST", "()"))
    saved = torch.load(out / "model_0000005.pth", weights_only=False)
    # Pretend the run died after the checkpoint of iteration 5: it had written no metrics yet
    # (every 20 iterations and at the last), and detectron2 appends to metrics.json.
    with open(out / "last_checkpoint", "w") as f:
        f.write("model_0000005.pth")
    os.remove(out / "metrics.json")

    cfg = setup(_args(out, small_shapes, *extra, "DATASETS.TEST", "()", resume=True))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 6
    assert saved["iteration"] == 5
    assert trainer.scheduler.state_dict() == saved["trainer"]["hooks"]["LRScheduler"]
    model = trainer.model
    for key, value in saved["model"].items():
        assert torch.equal(model.state_dict()[key], value), key
    assert saved["model"]["inter_scene.bank.valid"].any()
    opt_state = trainer.optimizer.state_dict()["state"]
    for index, state in saved["trainer"]["_trainer"]["optimizer"]["state"].items():
        for name, value in state.items():  # AdamW's step, exp_avg and exp_avg_sq
            assert torch.equal(torch.as_tensor(opt_state[index][name]), torch.as_tensor(value)), (
                name
            )

    # train_net's --resume finishes the run from there.
    main(_args(out, small_shapes, *extra, "DATASETS.TEST", "()", resume=True))
    log = (out / "log.txt").read_text()
    assert re.findall(r"Starting training from iteration (\d+)", log) == ["0", "6"]
    assert [m["iteration"] for m in _metrics(out)] == [11]
    final = torch.load(out / "model_final.pth", weights_only=False)
    assert final["iteration"] == 11
    assert final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 12


def test_adamw_is_fused_and_steps_like_the_per_tensor_loop(tmp_path, small_shapes):
    """The fused AdamW gets detectron2's parameter groups and clipping, and updates the
    parameters as torch's default AdamW with the same groups does."""
    cfg = setup(_args(tmp_path, small_shapes, "SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SEED", "3"))
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    assert optimizer.defaults["fused"] is True
    assert type(optimizer).__name__ == "AdamWWithGradientClip"
    reference = torch.optim.AdamW(
        [{**g, "params": list(g["params"])} for g in optimizer.param_groups], fused=False
    )
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    fused = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for (name, p), grad in zip(model.named_parameters(), grads):
            p.copy_(start[name])
            p.grad = grad
    torch.nn.utils.clip_grad_value_(model.parameters(), cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE)
    reference.step()
    moved = 0
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused[name], p.detach(), rtol=1e-5, atol=1e-7, msg=name)
        moved += not torch.equal(fused[name], start[name])
    assert moved == len(start)


@multiprocess
def test_two_cpu_processes_train_with_gloo(tmp_path, small_shapes, monkeypatch):
    """Two ranks train one model: each ends with the parameters rank 0 saved, and the query
    bank that the ranks filled together."""
    out, dump = tmp_path / "ddp", tmp_path / "dump"
    dump.mkdir()
    # Each spawned rank dumps its parameters and bank after training (rank_dump/sitecustomize).
    paths = [RANK_DUMP, *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.setenv("IUQ_TEST_RANK_DUMP", str(dump))
    args = _args(
        out,
        small_shapes,
        "SOLVER.MAX_ITER",
        "6",
        "TEST.EVAL_PERIOD",
        "0",
        "MODEL.META_ARCHITECTURE",
        "IUQCondInst",
        "INPUT.DATASET_MAPPER_NAME",
        "iuq",
        "MODEL.IUQ.EQUI.ENABLED",
        "True",
        "DATASETS.TEST",
        "()",
    )
    args.num_gpus = 2
    args.dist_timeout = DIST_TIMEOUT_S
    run(args)
    assert [m["iteration"] for m in _metrics(out)] == [5]
    final = torch.load(out / "model_final.pth", weights_only=False)["model"]
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [(d["rank"], d["world_size"], d["iteration"]) for d in ranks] == [(0, 2, 6), (1, 2, 6)]
    assert ranks[0]["bank"]["inter_scene.bank.valid"].any()
    for key, value in ranks[0]["bank"].items():
        assert torch.equal(ranks[1]["bank"][key], value), key
    # DDP keeps the parameters equal (not BN's running statistics: broadcast_buffers=False).
    assert ranks[0]["params"] and ranks[0]["params"].keys() <= final.keys()
    for key in ranks[0]["params"]:
        assert torch.equal(ranks[0]["params"][key], final[key]), key
        assert torch.equal(ranks[1]["params"][key], final[key]), key


def test_train_net_script_help_runs():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        result.returncode == 0 and "--eval-only" in result.stdout and "--num-gpus" in result.stdout
    )
