"""Per-modality loss metrics: the loader's `Batch.modality` marks each position as text, vision
sample or padding; pretrain's `loss_text` / `loss_vision` equal a direct cross-entropy over those
targets, from the same forward's per-position losses (also on the DEP path)."""

import pytest
import torch
import torch.nn.functional as F

from model.config import model_preset
from model.multimodal import K25Model, mean_token_loss
from training.data import MODALITY_PAD, MODALITY_TEXT, MODALITY_VISION
from training.loader import StreamingLoader
from training.pretrain import modality_loss_sums, modality_metrics

SEQ_LEN, BATCH = 128, 4


def batches(tiny, n, **kw):
    mixture, vocab = tiny
    args = dict(sources=("text", "image_text", "video"), vision_ratio=0.3, seq_len=SEQ_LEN, batch_size=BATCH,
                seed=1234, dp_rank=0, dp_size=1, num_workers=0)
    args.update(kw)
    loader = StreamingLoader(mixture, vocab, **args)
    try:
        return [loader.batch(s) for s in range(n)]
    finally:
        loader.close()


def segments(batch, row):
    """[start, stop) runs of positions in one packed document, from the attention mask."""
    m = batch.attn_mask[row, 0]
    cuts = [0] + [i for i in range(1, SEQ_LEN) if not m[i, i - 1]] + [SEQ_LEN]
    return list(zip(cuts[:-1], cuts[1:]))


def expected_modality(batch, row, start, stop, vocab) -> int:
    tok = batch.tokens[row, start:stop]
    if (tok == vocab.pad).all():
        return MODALITY_PAD
    media = (tok == vocab.media_begin) | (tok == vocab.media_pad) | (tok == vocab.media_end)
    return MODALITY_VISION if media.any() else MODALITY_TEXT


@pytest.mark.parametrize("kw", [{}, {"sources": ("image_text", "video"), "vision_ratio": 0.0},
                                {"sources": ("text",), "vision_ratio": 0.0}])
def test_modality_marks_each_document(tiny, kw):
    _, vocab = tiny
    seen = set()
    for b in batches(tiny, 6, **kw):
        assert b.modality.shape == b.tokens.shape and b.modality.dtype == torch.int8
        for r in range(BATCH):
            for start, stop in segments(b, r):
                want = expected_modality(b, r, start, stop, vocab)
                assert (b.modality[r, start:stop] == want).all(), (r, start, stop, b.modality[r, start:stop])
                seen.add(want)
        # every media token is vision; every counted target is text or vision, never padding
        media = (b.tokens == vocab.media_pad) | (b.tokens == vocab.media_begin) | (b.tokens == vocab.media_end)
        assert (b.modality[media] == MODALITY_VISION).all()
        assert (b.modality[b.targets != -100] != MODALITY_PAD).all()
        assert (b.modality[b.tokens == vocab.pad] == MODALITY_PAD).all()
    if "text" not in kw.get("sources", ("text",)):
        assert seen == {MODALITY_VISION, MODALITY_PAD}  # vision-only rows end in padding
    elif kw.get("vision_ratio", 0.3) == 0:
        assert seen == {MODALITY_TEXT}
    else:
        assert seen == {MODALITY_TEXT, MODALITY_VISION}


def manual(model, b, code):
    logits = model(b.tokens, b.vision_items, b.attn_mask).float()
    keep = (b.targets != -100) & (b.modality == code)
    return F.cross_entropy(logits[keep], b.targets[keep]), int(keep.sum())


def test_modality_losses_equal_a_direct_cross_entropy(tiny):
    _, vocab = tiny
    torch.manual_seed(0)
    model = K25Model(model_preset("tiny", vocab_size=vocab.size), media_pad_id=vocab.media_pad).eval()
    b0, b1 = batches(tiny, 2)
    with torch.no_grad():
        tl = [model.token_losses(b.tokens, b.targets, b.vision_items, b.attn_mask) for b in (b0, b1)]
        # the mean of the per-position losses is the training loss
        assert torch.allclose(mean_token_loss(tl[0], b0.targets), model.loss(b0.tokens, b0.targets, b0.vision_items,
                                                                            b0.attn_mask), atol=1e-5)
        assert (tl[0][b0.targets == -100] == 0).all()
        one = modality_metrics(modality_loss_sums(tl[0], b0.targets, b0.modality))
        text, n_text = manual(model, b0, MODALITY_TEXT)
        vision, n_vision = manual(model, b0, MODALITY_VISION)
        assert n_text > 0 and n_vision > 0
        assert one["loss_text"] == pytest.approx(float(text), abs=1e-5)
        assert one["loss_vision"] == pytest.approx(float(vision), abs=1e-5)
        assert one["loss_text"] != pytest.approx(one["loss_vision"], abs=1e-3)
        # text + vision targets are all the targets: their count-weighted mean is the loss
        total = (one["loss_text"] * n_text + one["loss_vision"] * n_vision) / (n_text + n_vision)
        assert total == pytest.approx(float(mean_token_loss(tl[0], b0.targets)), abs=1e-5)
        # ranks combine by summing [sum, count] pairs: the token-weighted mean over both batches
        both = modality_loss_sums(tl[0], b0.targets, b0.modality) + modality_loss_sums(tl[1], b1.targets, b1.modality)
        t1, m1 = manual(model, b1, MODALITY_TEXT)
        pooled = (float(text) * n_text + float(t1) * m1) / (n_text + m1)
        assert modality_metrics(both)["loss_text"] == pytest.approx(pooled, abs=1e-5)


def test_a_modality_without_targets_is_not_logged():
    targets = torch.tensor([[3, 4, -100, 5]])
    modality = torch.tensor([[MODALITY_TEXT, MODALITY_TEXT, MODALITY_PAD, MODALITY_TEXT]], dtype=torch.int8)
    token_loss = torch.tensor([[1.0, 2.0, 0.0, 4.0]])
    sums = modality_loss_sums(token_loss, targets, modality)
    assert sums.tolist() == [7.0, 3.0, 0.0, 0.0]
    assert modality_metrics(sums) == {"loss_text": pytest.approx(7 / 3)}


def test_dep_returns_the_per_position_losses(tiny, tmp_path):
    """The DEP path's stats carry the same per-position losses as the plain forward (1-rank group)."""
    import torch.distributed as dist

    from training.dep import dep_loss_and_backward

    _, vocab = tiny
    torch.manual_seed(0)
    model = K25Model(model_preset("tiny", vocab_size=vocab.size), media_pad_id=vocab.media_pad)
    b = batches(tiny, 1)[0]
    assert b.vision_items
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        stats: dict = {}
        loss = dep_loss_and_backward(model, b.tokens, b.targets, b.attn_mask, b.vision_items, stats=stats)
    finally:
        dist.destroy_process_group()
    with torch.no_grad():
        plain = model.token_losses(b.tokens, b.targets, b.vision_items, b.attn_mask)
    assert stats["token_loss"].shape == b.targets.shape and not stats["token_loss"].requires_grad
    assert torch.allclose(stats["token_loss"], plain, atol=1e-5)
    assert float(loss) == pytest.approx(float(mean_token_loss(plain, b.targets)), abs=1e-5)
