"""Long-context mid-training (RECIPE.md §3.1): continues joint pre-training at a longer
sequence length with scaled rotary positions (tiny: 128 -> 256 tokens; k25: 32K then 256K with
YaRN)."""

from assets.common import define_training_asset

midtrain = define_training_asset("midtrain", "training.pretrain", upstream="joint_pretrain", group="pretrain", doc=__doc__)
