"""DEP, the Decoupled Encoder Process (RECIPE.md §4.2), for the data-parallel engine.

One training step in three phases, all inside `dep_loss_and_backward`:

1. Balanced vision forward. Every rank's vision item shapes are gathered (`all_gather_object`);
   all items of the global batch are assigned to ranks by patch count (greedy, largest first, onto
   the least loaded rank; ties prefer the item's own rank, then the lowest rank, so every rank
   computes the same plan). Pixels travel to their encoding rank (`all_to_all_single` on uint8
   bytes), the encoder runs under `no_grad` on its assigned items (activations discarded), and the
   output embeddings travel back to the rank that owns the item.
2. Backbone training. The received embeddings become leaf tensors (requires_grad) spliced into the
   text embeddings at `<|media_pad|>` slots; the backbone runs forward and backward, which leaves
   d loss / d embedding on the leaves.
3. Vision recomputation and backward. Each item's embedding gradient goes back to its encoding
   rank, which re-runs the encoder forward with grad on the *same* packed item list and calls
   `backward` with the gathered gradients.

Gradient scaling. The loss is each rank's own mean cross-entropy, exactly as `K25Model.loss`. An
encoding rank backpropagates, for each item it encodes, the gradient of *the owner's* loss, so its
ViT .grad holds sum over its items of d loss_owner / d theta. Summed over ranks that is
sum_r d loss_r / d theta, the same total as the plain path, and the engine's all-reduce (sum, then
divide by world) turns both into the same average. Backbone grads are untouched by DEP. No extra
scaling is therefore applied; per-rank ViT grads differ from the plain path, their sum does not.

Transport is `all_to_all_single` with uneven splits (gloo and NCCL both implement it). Item order
on the encoding rank is global order (source rank, local index), so the no-grad forward and the
recomputation pack exactly the same sequence and give the same outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from model.multimodal import mean_token_loss, token_cross_entropy

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# Planning (pure python, identical on every rank)


def item_patches(shape: Shape, patch: int) -> int:
    """Patch count of a uint8 [H,W,3] image or [T,H,W,3] chunk: the ViT's sequence length."""
    t = shape[0] if len(shape) == 4 else 1
    h, w = shape[-3], shape[-2]
    return t * (h // patch) * (w // patch)


def item_tokens(shape: Shape, patch: int, merge: int) -> int:
    """LLM tokens the encoder emits for an item (2x2 merge, chunks pooled over time)."""
    h, w = shape[-3], shape[-2]
    return (h // (patch * merge)) * (w // (patch * merge))


@dataclass
class DepPlan:
    """Who encodes what. Items are named (src rank, local index)."""

    world: int
    shapes: list[list[Shape]]  # [src rank][local index] -> item shape
    owner: list[list[int]]  # [src rank][local index] -> encoding rank
    load: list[int] = field(default_factory=list)  # patches encoded per rank

    def assigned(self, rank: int) -> list[tuple[int, int]]:
        """Items `rank` encodes, in global order (src, index)."""
        return [(s, i) for s in range(self.world) for i, o in enumerate(self.owner[s]) if o == rank]

    @property
    def imbalance(self) -> float:
        """max / mean of patches per rank (1.0 = perfect)."""
        mean = sum(self.load) / max(1, len(self.load))
        return max(self.load) / mean if mean else 1.0


def plan_assignment(shapes: list[list[Shape]], patch: int, balance: bool = True) -> DepPlan:
    """Greedy largest-first assignment of all items to the least loaded rank (deterministic).

    balance=False keeps every item on its own rank (the naive baseline)."""
    world = len(shapes)
    owner = [[s] * len(items) for s, items in enumerate(shapes)]
    load = [0] * world
    if not balance:
        for s, items in enumerate(shapes):
            load[s] = sum(item_patches(sh, patch) for sh in items)
        return DepPlan(world, shapes, owner, load)
    order = sorted(((item_patches(sh, patch), s, i) for s, items in enumerate(shapes) for i, sh in enumerate(items)),
                   key=lambda x: (-x[0], x[1], x[2]))
    for cost, s, i in order:
        r = min(range(world), key=lambda r: (load[r], r != s, r))
        owner[s][i] = r
        load[r] += cost
    return DepPlan(world, shapes, owner, load)


# ---------------------------------------------------------------------------------------------
# Transport


def _exchange(send: list[torch.Tensor], recv_numel: list[int], template: torch.Tensor, group) -> list[torch.Tensor]:
    """Send 1-D `send[r]` to rank r; receive 1-D tensors of `recv_numel[r]` elements from rank r."""
    world = len(send)
    inp = torch.cat([t.reshape(-1) for t in send]) if send else template.new_empty(0)
    out = template.new_empty(sum(recv_numel))
    dist.all_to_all_single(out, inp.contiguous(), output_split_sizes=list(recv_numel),
                           input_split_sizes=[t.numel() for t in send], group=group)
    return list(out.split(list(recv_numel))) if world else []


def _numel(shape: Shape) -> int:
    return math.prod(shape)


# ---------------------------------------------------------------------------------------------
# The step


@dataclass
class DepStats:
    plan: DepPlan
    local_patches: int  # patches this rank would encode without DEP
    encoded_patches: int  # patches this rank encoded with DEP


def exchange_shapes(vision_items: list[torch.Tensor] | None, group=None) -> list[list[Shape]]:
    mine = [tuple(int(d) for d in x.shape) for x in (vision_items or [])]
    world = dist.get_world_size(group)
    shapes: list = [None] * world
    dist.all_gather_object(shapes, mine, group=group)
    return [[tuple(s) for s in per] for per in shapes]


def dep_loss_and_backward(model, tokens: torch.Tensor, targets: torch.Tensor, attn_mask: torch.Tensor | None = None,
                          vision_items: list[torch.Tensor] | None = None, group=None, balance: bool = True,
                          stats: dict | None = None) -> torch.Tensor:
    """One DEP forward + backward of `model` (a K25Model) on this rank's batch.

    Every rank of `group` must call it in the same step (it is collective, also for ranks without
    images). Gradients are *accumulated* into `.grad` of the model's parameters (call zero_grad
    before, and do not call backward on the result). Returns this rank's loss, detached: the same
    value `model.loss(tokens, targets, vision_items, attn_mask)` gives.

    balance=False runs the same three phases with every item encoded by its own rank (useful to
    separate the cost of the recomputation from the gain of balancing). If `stats` is a dict, it
    gets the plan and patch loads ("plan", "local_patches", "encoded_patches") and the detached
    per-position cross-entropy ("token_loss", [B, T], 0 where the target is -100).
    """
    vision = model.vision
    vcfg = vision.cfg
    patch, merge = vcfg.patch_size, vcfg.merge_size
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    items = list(vision_items or [])
    device = vision.pos_emb.device

    shapes = exchange_shapes(items, group)
    plan = plan_assignment(shapes, patch, balance)
    if stats is not None:
        stats.update(plan=plan, local_patches=sum(item_patches(s, patch) for s in shapes[rank]),
                     encoded_patches=plan.load[rank])
    n_global = sum(len(s) for s in shapes)
    mine_assigned = plan.assigned(rank)

    # ---- phase 1: pixels to encoders, no-grad encoder forward, embeddings back to owners
    pix = torch.empty(0, dtype=torch.uint8, device=device)
    enc_items: list[torch.Tensor] = []
    if n_global:
        send = [[] for _ in range(world)]
        for i, x in enumerate(items):
            send[plan.owner[rank][i]].append(x.to(device=device, dtype=torch.uint8).reshape(-1))
        send_t = [torch.cat(b) if b else pix for b in send]
        recv_numel = [sum(_numel(shapes[s][i]) for i, o in enumerate(plan.owner[s]) if o == rank) for s in range(world)]
        recv = _exchange(send_t, recv_numel, pix, group)
        for s in range(world):  # recv[s] holds src s's items for me, in local index order
            sizes = [(i, shapes[s][i]) for i, o in enumerate(plan.owner[s]) if o == rank]
            chunks = recv[s].split([_numel(sh) for _, sh in sizes]) if sizes else []
            enc_items.extend(c.view(sh) for c, (_, sh) in zip(chunks, sizes))
    dim = model.cfg.dim
    enc_tokens = [item_tokens(shapes[s][i], patch, merge) for s, i in mine_assigned]
    out_dtype = vision.projector.proj[-1].weight.dtype
    ftemplate = torch.empty(0, dtype=out_dtype, device=device)
    own_emb = ftemplate.new_empty(0, dim)
    own_tokens = [item_tokens(sh, patch, merge) for sh in shapes[rank]]
    if n_global:
        with torch.no_grad():
            enc_out = vision(enc_items) if enc_items else ftemplate.new_empty(0, dim)
        per_item = dict(zip(mine_assigned, enc_out.split(enc_tokens)))
        send = [torch.cat([per_item[(s, i)] for s2, i in mine_assigned if s2 == s] or [ftemplate.new_empty(0, dim)])
                for s in range(world)]
        recv_numel = [sum(own_tokens[i] for i, o in enumerate(plan.owner[rank]) if o == e) * dim for e in range(world)]
        recv = _exchange(send, recv_numel, ftemplate, group)
        # recv[e]: my items encoded by e, in my local index order -> reassemble in local order
        parts: list[torch.Tensor | None] = [None] * len(items)
        for e in range(world):
            idx = [i for i, o in enumerate(plan.owner[rank]) if o == e]
            for i, c in zip(idx, recv[e].view(-1, dim).split([own_tokens[i] for i in idx])):
                parts[i] = c
        if parts:
            own_emb = torch.cat(parts)  # type: ignore[arg-type]

    # ---- phase 2: backbone forward + backward with the embeddings as leaves
    vision_trainable = any(p.requires_grad for p in vision.parameters())
    leaf = own_emb.detach().requires_grad_(vision_trainable and own_emb.numel() > 0)
    backbone = model.backbone
    h = backbone.embed(tokens)
    slots = tokens == model.media_pad_id
    n_slots = int(slots.sum())
    if leaf.shape[0] != n_slots:
        raise ValueError(f"vision produced {leaf.shape[0]} tokens for {n_slots} media placeholders")
    if n_slots:
        h = h.clone()
        h[slots] = leaf.to(h.dtype)
    logits = backbone.forward_embeddings(h, attn_mask)
    token_loss = token_cross_entropy(logits, targets)
    loss = mean_token_loss(token_loss, targets)
    if stats is not None:
        stats["token_loss"] = token_loss.detach()
    if loss.requires_grad:
        loss.backward()

    # ---- phase 3: gradients back to encoders, recompute with grad, backward
    # (vision_trainable is the same on every rank: the engine freezes the same modules everywhere)
    if n_global and vision_trainable:
        g = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        g = g.to(out_dtype)
        send = []
        off = 0
        bounds = [0]
        for n in own_tokens:
            off += n
            bounds.append(off)
        for e in range(world):
            idx = [i for i, o in enumerate(plan.owner[rank]) if o == e]
            send.append(torch.cat([g[bounds[i]:bounds[i + 1]] for i in idx] or [ftemplate.new_empty(0, dim)]))
        recv_numel = [sum(enc_tokens[k] for k, (s2, _) in enumerate(mine_assigned) if s2 == s) * dim
                      for s in range(world)]
        recv = _exchange(send, recv_numel, ftemplate, group)
        if enc_items:
            # recv[s] is in src s's local order, which is the order of mine_assigned within s
            grad_out = torch.cat([r.view(-1, dim) for r in recv])
            out = vision(enc_items)
            out.backward(grad_out)
    return loss.detach()
