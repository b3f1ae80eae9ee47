"""Post-training: zero-vision SFT -> RL -> PARL, one asset per stage of training/spec.py's STAGES
in the `posttrain` group, each chained to the stage before it."""

from defs.common import training_asset
from training.spec import STAGES

DESCRIPTIONS = {
    "sft": """Zero-vision SFT (RECIPE.md §5): text-only multi-turn SFT on executed IPython traces
(sft_tool_data: image tasks whose pixels stay in the kernel, program-of-thought GSM8K) and GSM8K
chat, loss on assistant turns and tool calls only; the vision encoder is frozen and sees no data.""",
    "rl": """RL with the K2.5 objective (RECIPE.md §6.1, Eq. 1): pi_old from the rollout engine's
log-probs, per-prompt normalisation, ratio mask in [alpha, beta], squared log-ratio penalty,
MuonClip; tasks by ability (reasoning, knowledge, perception, instruction following, IPython tools)
with text and image prompts, scored by the shared rewards; Toggle (Eq. 2) with budgets estimated
once. Writes the reward-1 vision trajectories for rft_data.""",
    "parl": """PARL for the Agent Swarm (RECIPE.md §7): the orchestrator learns how many frozen
sub-agents to launch on wide-search bundles, rewarded by lambda1*r_parallel + lambda2*r_finish +
r_perf with annealed lambdas, under a critical-steps budget.""",
}

CODE_VERSIONS = {"sft": "sft-v2",  # v2: tool calls, multi-turn packing, sft_tool_data
                 "rl": "rl-v2", "parl": "parl-v2"}  # v2: Eq. 1 exactly, engine rollouts, domains, Toggle

POSTTRAIN_ASSETS = [training_asset(s.name, DESCRIPTIONS[s.name], **({"code_version": CODE_VERSIONS[s.name]}
                                                                     if s.name in CODE_VERSIONS else {}))
                    for s in STAGES if s.group == "posttrain"]
