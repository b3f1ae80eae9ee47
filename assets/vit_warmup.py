"""ViT warm-up (RECIPE.md §3.2): MoonViT-3D and the projector learn from caption
cross-entropy on image-text pairs and 4-frame video chunks. In the tiny profile the small LLM is
the caption decoder and is trained too (no pretrained decoder exists at that size); the k25
profile trains only the ViT."""

from assets.common import define_training_asset

vit_warmup = define_training_asset("vit_warmup", "training.pretrain", upstream=None, group="pretrain", doc=__doc__)
