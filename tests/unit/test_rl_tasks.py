"""RL tasks by ability: every family builds scoreable tasks, image tasks carry real pixels and
pass the vision-critical filter, the pool is reproducible, and the domain weights are checked."""

import random
from types import SimpleNamespace

import pytest

from agents.envs.domains import FAMILIES, parse_domains
from agents.envs.rl_tasks import BUILDERS, RLTask, build_pool, vision_critical
from agents.rewards import REWARDS, Score, score
from agents.rewards.instructions import describe
from agents.trajectory import Trajectory
from infra.settings import default_data_root
from training.rl import RLRun  # imports torch.distributed (at collection: it probes the platform)
from training.rollout import Sample

ROOT = default_data_root()


def test_builders_cover_every_declared_family():
    assert {d: tuple(f) for d, f in BUILDERS.items()} == FAMILIES


@pytest.mark.parametrize("domain,family", [(d, f) for d, fs in FAMILIES.items() for f in fs])
def test_each_family_builds_a_scoreable_task(domain, family):
    task = BUILDERS[domain][family](0, random.Random(1), ROOT)
    assert task.domain == domain and task.text
    assert task.reward == "tool" or task.reward in REWARDS
    if task.modality == "image":
        assert task.media or task.reward == "tool"
        for m in task.media:
            assert m.ndim == 3 and m.shape[2] == 3 and m.shape[0] % 28 == 0 and m.shape[1] % 28 == 0
        assert vision_critical(task)
    if task.reward not in ("tool",):
        assert score(task.reward, "", task.reference).value == 0  # an empty answer earns nothing


def test_vision_critical_rejects_an_image_prompt_that_states_its_answer():
    leak = RLTask("x", "perception", "image", "There are 7 disks. How many disks?", "count", 7, answer_text="7")
    assert not vision_critical(leak)
    ok = RLTask("y", "perception", "image", "How many of the 17 shapes are disks?", "count", 7, answer_text="7")
    assert vision_critical(ok)  # 17 is not 7
    assert vision_critical(RLTask("z", "reasoning", "text", "2+5?", "math", "7", answer_text="7"))  # text: no filter


def test_instruction_prompts_state_their_constraints():
    for i in range(20):
        task = BUILDERS["instruction"]["text"](i, random.Random(i), ROOT)
        assert all(describe(c) in task.text for c in task.reference)
        assert any(c["kind"] in ("include", "ends_with") for c in task.reference)


def test_pool_is_reproducible_and_follows_the_weights():
    weights = parse_domains("reasoning:1,perception:3")
    a, _ = build_pool(weights, 40, 7, ROOT)
    b, _ = build_pool(weights, 40, 7, ROOT)
    assert [(t.id, t.text) for t in a] == [(t.id, t.text) for t in b]
    share = sum(t.domain == "perception" for t in a) / len(a)
    assert 0.55 < share < 0.95
    only_digits, _ = build_pool(parse_domains("perception.digit"), 10, 0, ROOT)
    assert {t.id.split("/")[1] for t in only_digits} == {"digit"}


@pytest.mark.parametrize("spec,message", [
    ("vision:1", "unknown RL domain"), ("perception.color", "unknown RL domain"),
    ("reasoning:x", "not a number"), ("reasoning:-1", "negative"), ("reasoning:0", "positive weight"),
])
def test_bad_domain_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_domains(spec)


def test_domain_weights_normalise_and_drop_zeros():
    assert parse_domains("reasoning:3,knowledge:1,tool:0") == {"reasoning": 0.75, "knowledge": 0.25}


def test_per_domain_rewards_use_the_pools_keys_and_leave_out_unsampled_ones():
    def task(domain, modality):
        return RLTask(f"{domain}/{modality}/0", domain, modality, "q", "exact", "a")

    pool = [task("reasoning", "text"), task("reasoning", "image"), task("perception", "image")]
    run = SimpleNamespace(pool=pool, engine=SimpleNamespace(world=1, device="cpu"))
    groups = [[Sample(pool[0], Trajectory(), Score(v, v == 1.0), "stop", "") for v in (1.0, 0.0)],
              [Sample(pool[2], Trajectory(), Score(0.25, False), "stop", "")]]
    assert RLRun._domain_rewards(run, groups) == {"reward/reasoning_text": 0.5, "reward/perception_image": 0.25}
