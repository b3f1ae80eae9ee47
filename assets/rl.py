"""RL with the K2.5 policy objective (RECIPE.md §6.1): group-mean baseline, token-level
ratio masking in [alpha, beta], squared log-ratio penalty; rule-based rewards on GSM8K train."""

from assets.common import define_training_asset

rl = define_training_asset("rl", "training.rl", upstream="sft", group="posttrain", doc=__doc__)
