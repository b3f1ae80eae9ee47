"""Long-context mid-training (RECIPE.md §3.1): continues joint pre-training in phases of growing
context, each with YaRN scaled to it (factor = seq_len / the model's original context, so the
extended context is exactly the phase's length), one program and one MLflow run for all.

- tiny: `ctx256` (14 steps, YaRN x2) -> `ctx1k` (4, x8) -> `ctx4k` (2, x32), original context 128.
- k25: `ctx32k` (YaRN x8) -> `ctx256k` (x64, the released config: 4096 x 64 = 262144), the
  paper's "500B -> 200B" tokens after joint pre-training's 4K context.

Each phase starts from the previous phase's final checkpoint (the first from joint_pretrain's),
has its own optimizer and WSD schedule, and checkpoints under `<run_dir>/phase-<k>-<name>`. The
materialization reports the last phase's checkpoint. A rerun of the same Dagster run resumes:
finished phases are skipped, the phase in progress continues exactly.

Launchpad overrides: `phase_steps: "14,4,2"` (steps per phase, in order), `<phase>.<field>` for
one phase (e.g. `ctx4k.batch_size: "2"`), and any field the phases do not set (e.g. `lr`) for
all of them. `steps`, `seq_len`, `yarn_factor` and `batch_size` are per phase here: setting them
stage-wide is rejected before launch, naming the per-phase form."""

from assets.common import define_training_asset

# train-v2: trained in phases (checkpoints under phase-<k>-<name>)
midtrain = define_training_asset("midtrain", "training.pretrain", upstream="joint_pretrain", group="pretrain", doc=__doc__,
                                code_version="train-v2")
