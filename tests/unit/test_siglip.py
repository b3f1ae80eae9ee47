"""The SigLIP-style contrastive loss of the ViT warm-up (training/siglip.py)."""

import math

import torch
import torch.nn.functional as F

from training.siglip import item_spans, siglip_loss

BEGIN, CONTENT, PAD, END, EOS, KIND = 90, 91, 92, 93, 94, 5


def _row():
    # text doc "1 2 [EOS]", then item A (2 slots, caption 7 8), item B (1 slot, caption 9), padding
    return torch.tensor([[1, 2, EOS, BEGIN, KIND, CONTENT, PAD, PAD, END, 7, 8, EOS,
                          BEGIN, KIND, CONTENT, PAD, END, 9, EOS, 0, 0]])


def test_item_spans_find_placeholders_and_captions_in_order():
    spans = item_spans(_row(), PAD, END, EOS)
    assert spans == [(0, [6, 7], [9, 10]), (0, [15], [17])]


def _embeddings(tokens, img, txt):
    """Embeddings whose item slots hold `img[k]` and caption positions hold `txt[k]`."""
    h = torch.zeros(*tokens.shape, img.shape[1])
    for k, (r, slots, caption) in enumerate(item_spans(tokens, PAD, END, EOS)):
        h[r, slots] = img[k]
        h[r, caption] = txt[k]
    return h


def test_matched_pairs_score_lower_than_swapped_pairs():
    tokens = _row()
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    matched = siglip_loss(_embeddings(tokens, torch.stack([a, b]), torch.stack([a, b])), tokens, PAD, END, EOS, 10.0, -10.0)
    swapped = siglip_loss(_embeddings(tokens, torch.stack([a, b]), torch.stack([b, a])), tokens, PAD, END, EOS, 10.0, -10.0)
    assert matched < swapped
    # by hand: logits 10*cos - 10 -> diagonal 0 (label +1), off-diagonal -10 (label -1)
    expected = (2 * -F.logsigmoid(torch.tensor(0.0)) + 2 * -F.logsigmoid(torch.tensor(10.0))) / 4
    assert math.isclose(float(matched), float(expected), rel_tol=1e-5)


def test_items_with_the_same_caption_are_positives():
    tokens = _row()
    tokens[0, 17] = 7  # item B's caption becomes "7"; item A's is "7 8": still different
    same = tokens.clone()
    same[0, 17:19] = torch.tensor([7, 8])  # B's caption "7 8" now equals A's (overwrites its EOS)
    same = torch.cat([same[:, :19], torch.tensor([[EOS, 0]])], 1)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    img, txt = torch.stack([a, b]), torch.stack([a, b])
    different = siglip_loss(_embeddings(tokens, img, txt), tokens, PAD, END, EOS, 10.0, -10.0)
    identical = siglip_loss(_embeddings(same, img, txt), same, PAD, END, EOS, 10.0, -10.0)
    # with equal captions the orthogonal off-diagonal pairs are labelled +1, so the loss rises
    assert identical > different + 1.0


def test_gradient_reaches_only_item_slots_and_captions():
    tokens = _row()
    h = torch.randn(*tokens.shape, 4, requires_grad=True)
    siglip_loss(h, tokens, PAD, END, EOS, 10.0, -10.0).backward()
    touched = sorted(set(h.grad.abs().sum(-1).nonzero()[:, 1].tolist()))
    assert touched == [6, 7, 9, 10, 15, 17]


def test_fewer_than_two_items_gives_no_loss():
    tokens = torch.tensor([[BEGIN, KIND, CONTENT, PAD, END, 7, EOS]])
    assert siglip_loss(torch.randn(1, 7, 4), tokens, PAD, END, EOS, 10.0, -10.0) is None
