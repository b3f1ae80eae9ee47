"""Expert parallelism over 2 gloo ranks (CPU) equals the single-process MoE: outputs, input and
expert-weight gradients, uneven routing (idle experts, a rank that receives or sends nothing), the
global load, state-dict shard/gather, and a whole Backbone with its MoE layers swapped for EP ones."""

from __future__ import annotations

import os
import tempfile
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.integration

WORLD = 2
ATOL = 1e-5


def _cfg(**kw):
    from model.config import ModelConfig

    base = dict(vocab_size=64, dim=16, n_layers=2, n_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                qk_rope_head_dim=8, v_head_dim=8, n_dense_layers=1, ffn_dim=32, n_experts=8, top_k=2,
                expert_dim=32, max_seq_len=32, original_max_position=32)
    return ModelConfig(**{**base, **kw})


def _close(a, b, what, atol=ATOL):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
    assert err <= atol, f"{what}: max abs err {err:.3g} > {atol}"


def _inputs(n_tokens: tuple[int, int], dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, dim, generator=g) for n in n_tokens]
    ws = [torch.randn(n, dim, generator=g) for n in n_tokens]  # loss_r = sum(out_r * w_r)
    return xs, ws


def _check_moe(rank: int, group, n_tokens: tuple[int, int], bias: torch.Tensor | None, seed: int) -> dict:
    from model.backbone import MoE
    from training.expert_parallel import ExpertParallelMoE

    cfg = _cfg()
    torch.manual_seed(seed)  # identical full MoE on both ranks
    moe = MoE(cfg)
    if bias is not None:
        moe.expert_bias.copy_(bias)
    ep = ExpertParallelMoE.from_moe(moe, group)
    assert ep.w_gate.shape[0] == cfg.n_experts // WORLD
    lo, hi = ep.expert_start, ep.expert_start + ep.n_local

    xs, ws = _inputs(n_tokens, cfg.dim, seed + 1)
    # reference: the full MoE on all ranks' tokens in one process (routing is per token)
    x_ref = torch.cat(xs).requires_grad_()
    out_ref = moe(x_ref)
    (out_ref * torch.cat(ws)).sum().backward()
    load_ref = moe.last_load.clone()
    start = sum(n_tokens[:rank])
    ref_rows = slice(start, start + n_tokens[rank])

    x = xs[rank].clone().requires_grad_()
    out = ep(x)
    _close(out, out_ref.detach()[ref_rows], "output")
    (out * ws[rank]).sum().backward()
    _close(x.grad, x_ref.grad[ref_rows], "input grad")
    for name in ("w_gate", "w_up", "w_down"):
        _close(getattr(ep, name).grad, getattr(moe, name).grad[lo:hi], f"{name} grad (experts {lo}..{hi - 1})")
    assert torch.equal(ep.last_load, load_ref), f"last_load {ep.last_load.tolist()} != {load_ref.tolist()}"
    local_ref = torch.bincount(moe.route(xs[rank])[0].reshape(-1), minlength=cfg.n_experts)
    assert torch.equal(ep.last_local_load, local_ref)
    # replicated parts see only the local loss: their grads summed over ranks equal the reference
    for (name, p), p_ref in zip(((n, p) for n, p in ep.named_parameters() if not n.startswith("w_")),
                                (p for n, p in moe.named_parameters() if not n.startswith("w_"))):
        g = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(g, group=group)
        _close(g, p_ref.grad, f"{name} grad summed over ranks")
    return {"load": load_ref.tolist(), "recv": int(ep.last_load[lo:hi].sum())}


def _check_state_dict(rank: int, group) -> None:
    from model.backbone import MoE
    from training.expert_parallel import (
        ExpertParallelMoE,
        gather_moe_state_dict,
        merge_moe_state_dicts,
        shard_moe_state_dict,
    )

    torch.manual_seed(3)
    moe = MoE(_cfg())
    full = moe.state_dict()
    ep = ExpertParallelMoE.from_moe(moe, group)
    gathered = gather_moe_state_dict(ep.state_dict(), group)
    assert gathered.keys() == full.keys()
    for k in full:
        assert torch.equal(gathered[k], full[k]), k
    shards = [shard_moe_state_dict(full, r, WORLD) for r in range(WORLD)]
    for k, v in ep.state_dict().items():
        assert torch.equal(shards[rank][k], v), k
    merged = merge_moe_state_dicts(shards)
    assert all(torch.equal(merged[k], full[k]) for k in full)
    # a fresh EP layer loads its shard of a full checkpoint
    fresh = ExpertParallelMoE.from_config(_cfg(), group)
    fresh.load_state_dict(shard_moe_state_dict(full, rank, WORLD))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in ep.state_dict().items())


def _check_backbone(rank: int, group) -> None:
    """Whole model: EP layers in place of MoE; engine-style gradient sync equals the reference
    gradient of the mean of the two ranks' losses."""
    import copy

    from model.backbone import Backbone
    from training.expert_parallel import (
        ExpertParallelMoE,
        apply_expert_parallel,
        expert_parameters,
        grad_norm,
        is_expert_param,
        sync_gradients,
    )

    cfg = _cfg(n_layers=3)
    torch.manual_seed(5)
    ref = Backbone(cfg)
    model = copy.deepcopy(ref)
    layers = apply_expert_parallel(model, group)
    assert len(layers) == 2 and all(isinstance(m, ExpertParallelMoE) for m in model.moe_layers())
    assert set(map(id, expert_parameters(model))) == {id(p) for p in model.parameters() if is_expert_param(p)}

    g = torch.Generator().manual_seed(6)
    tokens = [torch.randint(0, cfg.vocab_size, (2, 6), generator=g) for _ in range(WORLD)]
    targets = [torch.randint(0, cfg.vocab_size, (2, 6), generator=g) for _ in range(WORLD)]

    def loss_of(m, t, y):
        logits = m.forward_embeddings(m.embed(t))
        return torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1)), logits

    ref_loss = 0.0
    for r in range(WORLD):
        loss_r, logits_r = loss_of(ref, tokens[r], targets[r])
        ref_loss = ref_loss + loss_r / WORLD
        if r == rank:
            logits_ref = logits_r.detach()
    ref_loss.backward()

    loss, logits = loss_of(model, tokens[rank], targets[rank])
    _close(logits, logits_ref, "backbone logits")
    loss.backward()
    params = list(model.parameters())
    sync_gradients(params, WORLD, group=group, expert_dp_group=None)  # world == EP group here
    ref_params = dict(ref.named_parameters())
    ref_sq = 0.0
    for name, p in model.named_parameters():
        p_ref = ref_params[name]
        g_ref = p_ref.grad if p_ref.grad is not None else torch.zeros_like(p_ref)
        ref_sq += float(g_ref.pow(2).sum())
        if is_expert_param(p):
            mod = model.get_submodule(name.rsplit(".", 1)[0])
            g_ref = g_ref[mod.expert_start:mod.expert_start + mod.n_local]
        _close(p.grad, g_ref, f"synced grad {name}")
    _close(grad_norm(params, group), torch.tensor(ref_sq).sqrt(), "global grad norm", atol=1e-4)


def _worker(rank: int, init_file: str, err_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        group = dist.new_group([0, 1])  # an explicit EP group (here: the world)
        # balanced-ish random routing, different token counts per rank
        _check_moe(rank, group, (12, 7), None, seed=0)
        # uneven: only experts 0 and 1 (both on rank 0) are selected; rank 1 receives nothing and
        # experts 2..7 get zero tokens
        bias = torch.tensor([100.0, 100.0] + [0.0] * 6)
        info = _check_moe(rank, group, (9, 5), bias, seed=1)
        assert info["load"][2:] == [0] * 6 and (info["recv"] == 0) == (rank == 1), info
        # only rank 1's experts (4..7, biased 4 and 6) used: rank 0 receives nothing, experts idle
        bias = torch.tensor([0.0] * 4 + [100.0, 0.0, 100.0, 0.0])
        _check_moe(rank, group, (6, 6), bias, seed=2)
        # rank 1 has no tokens at all (sends nothing, still takes part in every collective)
        _check_moe(rank, group, (10, 0), None, seed=4)
        _check_state_dict(rank, group)
        _check_backbone(rank, group)
        # no_grad forward (evaluation) works too
        with torch.no_grad():
            _check_moe_nograd(rank, group)
        dist.barrier()
    except BaseException:
        with open(os.path.join(err_dir, f"rank{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _check_moe_nograd(rank: int, group) -> None:
    from model.backbone import MoE
    from training.expert_parallel import ExpertParallelMoE

    torch.manual_seed(7)
    moe = MoE(_cfg())
    ep = ExpertParallelMoE.from_moe(moe, group)
    xs, _ = _inputs((4, 3), 16, 8)
    _close(ep(xs[rank].view(1, -1, 16)), moe(xs[rank]).view(1, -1, 16), "no_grad output")


def test_expert_parallel_matches_single_process(tmp_path):
    init_file = str(tmp_path / "init")
    err_dir = tempfile.mkdtemp(dir=tmp_path)
    try:
        mp.spawn(_worker, args=(init_file, err_dir), nprocs=WORLD, join=True)
    except Exception as e:
        logs = "\n".join(open(os.path.join(err_dir, f)).read() for f in sorted(os.listdir(err_dir)))
        pytest.fail(f"{e}\n{logs}")
