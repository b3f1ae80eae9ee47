"""Post-training: zero-vision SFT -> RL -> PARL, one asset per stage of training/spec.py's STAGES
in the `posttrain` group, each chained to the stage before it."""

import math

from defs.common import StageCheck, training_asset
from training.spec import STAGES, StageSpec

DESCRIPTIONS = {
    "sft": """Zero-vision SFT (RECIPE.md §5): text-only multi-turn SFT on executed IPython traces
(sft_tool_data: image tasks whose pixels stay in the kernel, program-of-thought GSM8K,
widesearch_local search and delegation traces) and GSM8K chat, loss on assistant turns and tool
calls only; the vision encoder is frozen and sees no data.""",
    "grm": """The generative reward model (RECIPE.md §6.2): a judge SFT'd from the SFT checkpoint on
(rubric, prompt, response, verdict), the verdicts from hidden programmatic checkers (instruction
constraints, initial praise, self-justification, answer correctness), the responses constructed
or sampled from the SFT checkpoint on RL's instruction prompts; new prompts and one rubric family
held out. Reports held-out judge accuracy per family; RL reads it when rl.grm_weight > 0.""",
    "rl": """RL with the K2.5 objective (RECIPE.md §6.1, Eq. 1): pi_old from the rollout engine's
log-probs, per-prompt normalisation, ratio mask in [alpha, beta], squared log-ratio penalty,
MuonClip; tasks by ability (reasoning, knowledge, perception, instruction following, IPython tools)
with text and image prompts, scored by the shared rewards; Toggle (Eq. 2) with budgets estimated
once; with rl.grm_weight > 0 the grm judge's score joins the reward where the verifier passes.
Writes the reward-1 vision trajectories for rft_data.""",
    "parl": """PARL for the Agent Swarm (RECIPE.md §7) on widesearch_local (country pages from
countryinfo, KJV distractors): the orchestrator searches, opens pages, creates sub-agents and
assigns them tasks that run concurrently; sub-agents are the frozen RL checkpoint (or scripted,
labelled so). Episodes are measured in critical steps from the execution graph under a budget;
reward lambda1*r_parallel + lambda2*r_finish + item-F1 with annealed lambdas, on orchestrator
tokens only.""",
}

CODE_VERSIONS = {"sft": "sft-v3",  # v3: widesearch_local search traces
                 "grm": "grm-v1",
                 "rl": "rl-v3",  # v3: the GRM term
                 "parl": "parl-v3"}  # v3: the tool-using swarm on widesearch_local


def _judge_parses(md: dict, spec: StageSpec) -> tuple[bool, dict]:
    share = md.get("judge_parse_fail_share")
    ok = isinstance(share, (int, float)) and share <= spec.grm.max_parse_fail_share
    return ok, {"judge_parse_fail_share": share, "max": spec.grm.max_parse_fail_share}


def _judge_accuracy(md: dict, spec: StageSpec) -> tuple[bool, dict]:
    seen, unseen = md.get("judge_acc_seen"), md.get("judge_acc_unseen")
    ok = isinstance(seen, (int, float)) and math.isfinite(seen) and seen >= spec.grm.min_accuracy
    return ok, {"judge_acc_seen": seen, "min_accuracy": spec.grm.min_accuracy, "judge_acc_unseen": unseen,
                "held_out_family": spec.grm.held_out_family}


# A judge whose verdicts do not parse would pay RL nothing: that blocks. Its accuracy is a warning:
# a weak judge is still a measured one, and the tiny profile's 60 steps do not reach 0.75.
STAGE_CHECKS = {"grm": (StageCheck("judge_parses", True, _judge_parses),
                        StageCheck("judge_accuracy", False, _judge_accuracy))}

POSTTRAIN_ASSETS = [training_asset(s.name, DESCRIPTIONS[s.name], CODE_VERSIONS.get(s.name, "train-v3"),
                                   STAGE_CHECKS.get(s.name, ()))
                    for s in STAGES if s.group == "posttrain"]
