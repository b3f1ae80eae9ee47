"""SigLIP-style contrastive loss for the ViT warm-up (RECIPE.md §3.2, optional beside the caption loss).

For every vision item of a packed batch: the image embedding is the mean of the item's projected
vision tokens (what the LLM sees at its `<|media_pad|>` slots), the text embedding the mean of the
LLM input embeddings of its caption (the tokens after the item's `<|media_end|>` up to the next
[EOS]). Both are L2-normalised; the pairwise logits are t * <img, txt> + b and
the loss is the sigmoid loss of SigLIP, averaged over all pairs: -log sigmoid(label * logit) with
label +1 for an item and every item with the same caption (repeated captions such as "a handwritten
digit three" are true pairs, not negatives), else -1.

Pairs are formed within each rank's batch (no cross-rank gather). SigLIP learns t and b; here they
are fixed config values (`siglip_temperature`, `siglip_bias`, [not stated] for K2.5: SigLIP's
initial values 10 and -10), so the model's parameters and checkpoints stay the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def item_spans(tokens: torch.Tensor, media_pad: int, media_end: int, eos: int) -> list[tuple[int, list[int], list[int]]]:
    """Per vision item in placeholder order: (row, placeholder positions, caption positions).
    An item's placeholders are one run of `media_pad` within a row."""
    items = []
    for row in range(tokens.shape[0]):
        ids = tokens[row].tolist()
        i = 0
        while i < len(ids):
            if ids[i] != media_pad:
                i += 1
                continue
            start = i
            while i < len(ids) and ids[i] == media_pad:
                i += 1
            slots = list(range(start, i))
            j = i + 1 if i < len(ids) and ids[i] == media_end else i
            caption = []
            while j < len(ids) and ids[j] not in (media_pad, eos):
                caption.append(j)
                j += 1
            items.append((row, slots, caption))
    return items


def siglip_loss(embeddings: torch.Tensor, tokens: torch.Tensor, media_pad: int, media_end: int, eos: int,
                temperature: float, bias: float) -> torch.Tensor | None:
    """The loss over the items of the batch given the spliced input embeddings [B, T, D] (None when
    fewer than two items have a caption: no pair to contrast)."""
    spans = [(r, s, c) for r, s, c in item_spans(tokens, media_pad, media_end, eos) if c]
    if len(spans) < 2:
        return None
    img = torch.stack([embeddings[r, s].float().mean(0) for r, s, _ in spans])
    txt = torch.stack([embeddings[r, c].float().mean(0) for r, _, c in spans])
    logits = temperature * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T + bias
    captions = [tuple(tokens[r, c].tolist()) for r, _, c in spans]
    same = torch.tensor([[a == b for b in captions] for a in captions], device=logits.device)
    labels = same.float() * 2 - 1
    return -F.logsigmoid(labels * logits).mean()
