"""ViT warm-up (RECIPE.md §3.2), two phases in one program and one MLflow run:

1. `caption`: MoonViT-3D and the projector learn from caption cross-entropy through the decoder,
   on image-text pairs and 4-frame video chunks. In the tiny (and small) profile the small LLM is
   the caption decoder and is trained too (no pretrained decoder exists at that size); the k25
   profile trains only the ViT and the projector (the paper's decoder, Moonlight, is frozen).
2. `projector`: the "very short" alignment stage; only the projector is trained, every other
   weight is left bitwise unchanged.

The second phase starts from the first one's final checkpoint; checkpoints go under
`<run_dir>/phase-<k>-<name>`, and the materialization reports the projector phase's checkpoint
(joint pre-training starts from it). Launchpad overrides: `phase_steps: "90,10"` (steps per
phase), `<phase>.<field>` for one phase (e.g. `projector.lr: "1e-3"`), other fields for both;
`steps` and `trainable` are per phase and rejected stage-wide."""

from assets.common import define_training_asset

# train-v2: trained in phases (checkpoints under phase-<k>-<name>)
vit_warmup = define_training_asset("vit_warmup", "training.pretrain", upstream=None, group="pretrain", doc=__doc__,
                                  code_version="train-v2")
