"""Joint pre-training (RECIPE.md §3.3): ViT and LLM trained together from the warm-up
checkpoint on the token-level mix, vision:text 10:90 from step 0 (early fusion), WSD schedule,
aux-loss-free router-bias updates."""

from assets.common import define_training_asset

joint_pretrain = define_training_asset("joint_pretrain", "training.pretrain", upstream="vit_warmup", group="pretrain", doc=__doc__)
