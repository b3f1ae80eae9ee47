"""Pre-training: ViT warm-up -> joint pre-training -> long-context mid-training, one asset per
stage of training/spec.py's STAGES in the `pretrain` group, each chained to the stage before it."""

from defs.common import training_asset
from training.spec import STAGES

DESCRIPTIONS = {
    "vit_warmup": """ViT warm-up (RECIPE.md §3.2), two phases in one program and one MLflow run:

1. `caption`: MoonViT-3D and the projector learn from caption cross-entropy through the decoder,
   on image-text pairs and 4-frame video chunks. In the tiny (and small) profile the small LLM is
   the caption decoder and is trained too (no pretrained decoder exists at that size); the k25
   profile trains only the ViT and the projector (the paper's decoder, Moonlight, is frozen).
2. `projector`: the "very short" alignment stage; only the projector is trained, every other
   weight is left bitwise unchanged.

The second phase starts from the first one's final checkpoint; checkpoints go under
`<run_dir>/phase-<k>-<name>`, and the materialization reports the projector phase's checkpoint
(joint pre-training starts from it). Launchpad: `phase_steps: [90, 10]` (steps per phase),
`phase_overrides: {"projector.optimizer.lr": "1e-3"}` for one phase, the block sections for both;
`train.steps` and `train.trainable` are per phase and rejected stage-wide.""",
    "joint_pretrain": """Joint pre-training (RECIPE.md §3.3): ViT and LLM trained together from the warm-up
checkpoint on the token-level mix, vision:text 10:90 from step 0 (early fusion, `data.vision_ratio`),
WSD schedule, aux-loss-free router-bias updates, MuonClip.""",
    "midtrain": """Long-context mid-training (RECIPE.md §3.1): continues joint pre-training in phases of growing
context, each with YaRN scaled to it (factor = seq_len / the model's original context, so the
extended context is exactly the phase's length), one program and one MLflow run for all.

- tiny: `ctx256` (14 steps, YaRN x2) -> `ctx1k` (4, x8) -> `ctx4k` (2, x32), original context 128.
- k25: `ctx32k` (YaRN x8) -> `ctx256k` (x64, the released config: 4096 x 64 = 262144), the
  paper's "500B -> 200B" tokens after joint pre-training's 4K context.

Each phase starts from the previous phase's final checkpoint (the first from joint_pretrain's),
has its own optimizer and WSD schedule, and checkpoints under `<run_dir>/phase-<k>-<name>`. The
materialization reports the last phase's checkpoint. A rerun of the same Dagster run resumes:
finished phases are skipped, the phase in progress continues exactly.

Launchpad: `phase_steps: [14, 4, 2]` (steps per phase, in order), `phase_overrides:
{"ctx4k.data.batch_size": "2"}` for one phase, and the block sections for fields the phases do not
set (e.g. `optimizer.lr`). `train.steps`, `data.seq_len`, `train.yarn_factor` and
`data.batch_size` are per phase here: setting them stage-wide is rejected before launch, naming
the per-phase form.""",
}

PRETRAIN_ASSETS = [training_asset(s.name, DESCRIPTIONS[s.name]) for s in STAGES if s.group == "pretrain"]
