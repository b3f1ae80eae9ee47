"""Post-training: zero-vision SFT -> RL -> PARL, one asset per stage of training/spec.py's STAGES
in the `posttrain` group, each chained to the stage before it."""

from defs.common import training_asset
from training.spec import STAGES

DESCRIPTIONS = {
    "sft": """Zero-vision SFT (RECIPE.md §5): text-only chat SFT, loss on the assistant turn only;
the vision encoder is frozen and sees no data.""",
    "rl": """RL with the K2.5 policy objective (RECIPE.md §6.1): group-mean baseline, token-level
ratio masking in [alpha, beta], squared log-ratio penalty; rule-based rewards on GSM8K train.""",
    "parl": """PARL for the Agent Swarm (RECIPE.md §7): the orchestrator learns how many frozen
sub-agents to launch on wide-search bundles, rewarded by lambda1*r_parallel + lambda2*r_finish +
r_perf with annealed lambdas, under a critical-steps budget.""",
}

POSTTRAIN_ASSETS = [training_asset(s.name, DESCRIPTIONS[s.name]) for s in STAGES if s.group == "posttrain"]
