"""The query bank under real multi-process training (gloo on CPU)."""

import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn.parallel import DistributedDataParallel

from .conftest import DIST_TIMEOUT_S, make_input, multiprocess
from .test_query_bank import iuq_config

# Instances per image on each rank: rank 2 has none at all.
RANK_BOXES = {
    0: [[[10, 12, 60, 70], [50, 40, 120, 90]], [[5, 5, 30, 40]]],
    1: [[], [[20, 20, 70, 60]]],
    2: [[], []],
}
ITERATIONS = 3


# Rows per rank at each gather of the RowGather check (capacity 2: it must grow twice).
GATHER_ROWS = ([0, 3, 1], [1, 5, 0], [2, 2, 2])


def _gather_rows(rank: int, n: int, step: int):
    feats = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3) + 100 * rank + step
    return feats, torch.full((n,), 2**40 + rank, dtype=torch.int64)


def _gather_steps(rank: int) -> list:
    """RowGather over uneven counts, in the bank test's process group."""
    from iuq_d2.utils.comm import RowGather

    gather = RowGather(capacity=2)
    results = []
    for step, rows in enumerate(GATHER_ROWS):
        (feats, ids), counts = gather(*_gather_rows(rank, rows[rank], step))
        results.append((feats, ids, counts, gather.capacity))
    return results


def _worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=DIST_TIMEOUT_S),  # a rank stuck in a collective raises
    )
    torch.manual_seed(0)
    model = DistributedDataParallel(build_model(iuq_config()), broadcast_buffers=False)
    torch.manual_seed(rank)  # ranks draw different pixels
    batch = [
        make_input(96, 128, boxes, [0] * len(boxes), seed=100 * rank + i)
        for i, boxes in enumerate(RANK_BOXES[rank])
    ]
    with EventStorage():
        for _ in range(ITERATIONS):
            losses = model(batch)
            sum(losses.values()).backward()
    bank = model.module.inter_scene.bank
    torch.save(
        {name: buf.clone() for name, buf in bank.named_buffers()},
        os.path.join(out_dir, f"{rank}.pth"),
    )
    torch.save(_gather_steps(rank), os.path.join(out_dir, f"gather{rank}.pth"))
    dist.barrier()
    dist.destroy_process_group()


@multiprocess
def test_bank_is_identical_on_all_ranks_and_holds_every_rank(tmp_path):
    world_size = 3
    mp.spawn(_worker, args=(world_size, str(tmp_path / "store"), str(tmp_path)), nprocs=world_size)
    banks = [torch.load(tmp_path / f"{r}.pth", weights_only=True) for r in range(world_size)]
    for other in banks[1:]:
        for name, value in banks[0].items():
            assert torch.equal(value, other[name]), name
    k = iuq_config().MODEL.IUQ.INTER.PIXELS_PER_INSTANCE
    ids = banks[0]["image_ids"][banks[0]["valid"]]
    for rank, images in RANK_BOXES.items():
        for i, boxes in enumerate(images):
            assert int((ids == 100 * rank + i).sum()) == len(boxes) * k * ITERATIONS
    assert int(banks[0]["ptr"]) == 4 * k * ITERATIONS
    # The same processes' RowGather: one buffer, grown alike on every rank, exact ids.
    gathered = [torch.load(tmp_path / f"gather{r}.pth") for r in range(world_size)]
    for step, rows in enumerate(GATHER_ROWS):
        parts = [_gather_rows(r, n, step) for r, n in enumerate(rows)]
        feats, ids = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        for got_feats, got_ids, counts, _ in (res[step] for res in gathered):
            assert counts == rows and torch.equal(got_feats, feats) and torch.equal(got_ids, ids)
            assert got_feats.dtype == torch.float32 and got_ids.dtype == torch.int64
    assert [[r[3] for r in res] for res in gathered] == [[4, 8, 8]] * world_size
