"""Zero-vision SFT (RECIPE.md §5): text-only chat SFT, loss on the assistant turn only;
the vision encoder is frozen and sees no data."""

from assets.common import define_training_asset

sft = define_training_asset("sft", "training.sft", upstream="midtrain", group="posttrain", doc=__doc__)
