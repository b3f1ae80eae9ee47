"""Rejection-sampling data: reward-1 image trajectories written per iteration, gathered up to a
checkpoint's iterations, read back with their images, checked against their digest."""

import dataclasses
import random

import pytest
import torch

from agents.chat import render
from agents.engine import BatchingEngine
from agents.envs.rl_tasks import BUILDERS
from agents.rewards import Score
from infra.settings import default_data_root
from model.config import model_preset
from model.multimodal import K25Model
from training.data import encode_conversation
from training.rft import gather, read_rft, rft_rows, write_shard
from training.rollout import RolloutSettings, collect


@pytest.fixture(scope="module")
def groups(vocab):
    torch.manual_seed(0)
    model = K25Model(model_preset("tiny", vocab_size=vocab.size, max_seq_len=512), media_pad_id=vocab.media_pad)
    tasks = [BUILDERS["perception"]["digit"](0, random.Random(0), default_data_root()),
             BUILDERS["knowledge"]["text"](1, random.Random(1), default_data_root())]
    engine = BatchingEngine(model, slots=8, max_len=512, decode=vocab.decode)
    out, _ = collect(engine, vocab, tasks, RolloutSettings(3, 6, 1.0, 1.0), seed=5)
    # a fresh model is never right: mark members 0 and 2 of each group as reward 1 to exercise
    # the selection (the scores are what the reward would have returned for a right answer)
    return [[dataclasses.replace(s, score=Score(1.0, True, "x")) if i != 1 else s for i, s in enumerate(g)] for g in out]


def test_only_reward_one_image_samples_are_kept(groups):
    rows = rft_rows(groups, iteration=3, rank=1)
    assert [(r["task_id"].split("/")[1], r["member"]) for r in rows] == [("digit", 0), ("digit", 2)]
    assert all(r["iteration"] == 3 and r["rank"] == 1 and r["reward"] == 1.0 and len(r["images"]) == 1 for r in rows)


def test_gather_and_read_back(tmp_path, groups, vocab):
    run_dir, out = str(tmp_path / "run"), str(tmp_path / "rft")
    for it in range(3):
        write_shard(run_dir, it, 0, rft_rows(groups, it, 0))
    assert write_shard(run_dir, 3, 0, []) is None  # no rows, no file
    manifest = gather(run_dir, 2, out, {"checkpoint_uri": "x"})  # the checkpoint saw iterations 0 and 1
    assert manifest["rows"] == 4 and manifest["shards"] == 2 and manifest["domains"] == {"perception": 4}
    _, rows = read_rft(out)
    assert sorted({r["iteration"] for r in rows}) == [0, 1]
    for r in rows:
        image = r["messages"][0]["media"][0]
        assert image.dtype == torch.uint8 and image.shape[2] == 3
        prompt = render(r["messages"][:1], vocab, add_generation_prompt=True)
        assert list(r["ids"][: len(prompt)]) == prompt  # the stored tokens start with the prompt as rendered
        assert sum(r["loss_mask"]) == len(r["ids"]) - len(prompt)  # and the rest is the sampled answer
        ids, labels = encode_conversation(r["messages"], vocab)  # usable as chat data
        assert any(t != -100 for t in labels)
    # a changed file is refused
    (tmp_path / "rft" / "rft.parquet").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="digest"):
        read_rft(out)
