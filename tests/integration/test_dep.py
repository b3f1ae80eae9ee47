"""DEP (training/dep.py) on 2 real gloo ranks: gradients of every parameter after DEP plus the
engine's all-reduce (sum, then divide by world) equal the plain data-parallel path, and so does
the loss, with deliberately skewed image sizes (rank 0 several large items, rank 1 one small
image or none)."""

from __future__ import annotations

import json
import os

import helpers
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.dep import dep_loss_and_backward, item_patches, plan_assignment

pytestmark = pytest.mark.integration

VOCAB, MEDIA_PAD, SEQ, BATCH = 96, 5, 48, 2
SHAPES = {  # per scenario: [rank 0 items, rank 1 items]
    "skewed": [[(112, 112, 3), (168, 140, 3), (4, 56, 84, 3), (56, 56, 3)], [(28, 28, 3)]],
    "rank1_none": [[(112, 84, 3), (84, 112, 3), (56, 56, 3)], []],
}


def _batch(rank: int, shapes, patch: int = 14, merge: int = 2):
    g = torch.Generator().manual_seed(100 + rank)
    items = [torch.randint(0, 256, sh, dtype=torch.uint8, generator=g) for sh in shapes]
    n_media = sum((sh[-3] // (patch * merge)) * (sh[-2] // (patch * merge)) for sh in shapes)
    tokens = torch.randint(MEDIA_PAD + 1, VOCAB, (BATCH, SEQ), generator=g)
    flat = tokens.view(-1)
    assert n_media <= flat.numel() - 8
    flat[4:4 + n_media] = MEDIA_PAD  # media placeholders, spread over both rows if needed
    targets = torch.roll(tokens, -1, dims=1)
    targets[tokens == MEDIA_PAD] = -100
    targets[:, -1] = -100
    mask = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()[None, None].expand(BATCH, 1, SEQ, SEQ)
    return tokens, targets, items, mask


def _reduced_grads(model, world) -> list[torch.Tensor]:
    """The engine's `_all_reduce_grads`: flatten (None -> zeros), all-reduce sum, divide by world."""
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    return list(flat.split([p.numel() for p in params]))


def _worker(rank: int, world: int, port: int, scenario: str, trainable: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from model.config import model_preset
        from model.multimodal import K25Model

        torch.manual_seed(0)
        model = K25Model(model_preset("tiny", vocab_size=VOCAB), media_pad_id=MEDIA_PAD)
        if trainable == "llm":  # vision frozen, as in a text-only stage
            for p in model.vision.parameters():
                p.requires_grad_(False)
        tokens, targets, items, mask = _batch(rank, SHAPES[scenario][rank])

        # plain path: each rank its own images
        model.zero_grad(set_to_none=True)
        loss_plain = model.loss(tokens, targets, items or None, mask)
        loss_plain.backward()
        loss_plain = loss_plain.detach()
        plain = _reduced_grads(model, world)

        results = {}
        for balance in (True, False):
            model.zero_grad(set_to_none=True)
            stats: dict = {}
            loss_dep = dep_loss_and_backward(model, tokens, targets, mask, items, balance=balance, stats=stats)
            assert not loss_dep.requires_grad
            dep = _reduced_grads(model, world)
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            diffs = {n: float((a - b).abs().max()) for n, a, b in zip(names, plain, dep)}
            worst = max(diffs, key=diffs.get)
            vision_norm = sum(float(d.norm()) for n, d in zip(names, dep) if n.startswith("vision."))
            results[str(balance)] = {"loss_plain": float(loss_plain), "loss_dep": float(loss_dep),
                                     "max_grad_diff": diffs[worst], "worst": worst, "n_params": len(names),
                                     "vision_grad_norm": vision_norm, "load": stats["plan"].load,
                                     "local_patches": stats["local_patches"]}
            assert abs(float(loss_plain) - float(loss_dep)) <= 1e-5, (balance, float(loss_plain), float(loss_dep))
            assert diffs[worst] <= 1e-5, (balance, worst, diffs[worst])
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def _run(tmp_path, scenario: str, trainable: str = "all") -> list[dict]:
    mp.spawn(_worker, args=(2, helpers.free_port(), scenario, trainable, str(tmp_path)), nprocs=2, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_plan_is_balanced_and_deterministic():
    shapes = SHAPES["skewed"]
    a, b = plan_assignment(shapes, 14), plan_assignment([list(s) for s in shapes], 14)
    assert a.owner == b.owner
    total = sum(item_patches(sh, 14) for per in shapes for sh in per)
    assert sum(a.load) == total
    largest = max(item_patches(sh, 14) for per in shapes for sh in per)
    assert max(a.load) - min(a.load) <= largest  # greedy LPT bound
    naive = plan_assignment(shapes, 14, balance=False)
    assert max(a.load) < max(naive.load)
    assert all(o == 0 for o in naive.owner[0]) and all(o == 1 for o in naive.owner[1])


@pytest.mark.parametrize("scenario", sorted(SHAPES))
def test_dep_matches_plain_data_parallel(tmp_path, scenario):
    res = _run(tmp_path, scenario)
    for r in res:
        for balance, v in r.items():
            assert v["max_grad_diff"] <= 1e-5 and abs(v["loss_plain"] - v["loss_dep"]) <= 1e-5
            assert v["vision_grad_norm"] > 0  # ViT grads are really produced
    bal = res[0]["True"]["load"]
    assert max(bal) < max(res[0]["False"]["load"])  # balancing moved work off rank 0
    assert bal[1] > 0  # rank 1 (one small image or none) encodes some of rank 0's items


def test_dep_with_frozen_vision(tmp_path):
    res = _run(tmp_path, "skewed", trainable="llm")
    for r in res:
        for v in r.values():
            assert v["max_grad_diff"] <= 1e-5 and v["vision_grad_norm"] == 0
