"""PARL for the Agent Swarm (RECIPE.md §7): the orchestrator learns how many frozen
sub-agents to launch on wide-search bundles, rewarded by lambda1*r_parallel + lambda2*r_finish +
r_perf with annealed lambdas, under a critical-steps budget."""

from assets.common import define_training_asset

parl = define_training_asset("parl", "training.parl", upstream="rl", group="posttrain", doc=__doc__)
