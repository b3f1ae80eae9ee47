"""Pre-training stages: ViT warm-up, joint pre-training and long-context mid-training.

    torchrun --nproc-per-node 2 -m training.pretrain --spec <run dir>/spec.json
    torchrun --nproc-per-node 2 -m training.pretrain --stage joint_pretrain --profile tiny \
        --mixture <artifact root>/mixture/<run>/mixture.json --run-dir <uri> --init-from <checkpoint uri>

The stage's config decides the sources (vision-only captions for the warm-up, the token-level
10:90 vision:text mix for joint pre-training), the trainable modules and the context length.
Batches come from the streaming loader (training/loader.py); its state is saved per rank in
every checkpoint and restored on resume, so a resumed run sees exactly the batches it would have.

Phases. A stage with `phases` in its config (mid-training: 256 -> 1K -> 4K tokens with YaRN in
the tiny profile, 32K -> 256K at k25; ViT warm-up: "caption", then "projector" only) trains
them in order in this one program. Phase k gets its own engine with the phase's config, the run
directory `<run-dir>/phase-<k>-<name>` and, as its initial weights, the final committed
checkpoint of phase k-1 (phase 0: the stage's --init-from). Each phase has its own optimizer and
WSD schedule, and its own loader (seed + k unless the phase sets one). Resume: a phase whose
latest checkpoint is at its final step is skipped and that checkpoint starts the next phase; the
phase in progress resumes exactly through the engine; `--resume must` fails only when no phase
has a committed checkpoint. A resumed phase must have been started from the checkpoint that now
ends the phase before it (else it fails: a run dir whose earlier phase was lengthened afterwards).
One reporter serves all phases: metric steps continue across them (phase offset + step) so the
loss is one curve in MLflow, and the final report (Pipes metadata, `checkpoint_uri`) is the last
phase's. Phase lengths and settings are overrides: `phase_steps=14,4,2`, `ctx4k.data.batch_size=2`
(training/spec.py).

Per-modality loss. Besides the loss, every step logs `loss_text` (targets inside text
documents) and `loss_vision` (targets inside image-text and video samples: media markers,
timestamps and captions), each the token-weighted mean over all ranks, from the same forward's
per-position losses (`Batch.modality` from the loader). With DEP they come from the per-position
losses `dep_loss_and_backward` returns in its stats. A modality without targets in a step is
not logged for that step.
"""

from __future__ import annotations

import dataclasses
import gc

import torch
import torch.distributed as dist

from model.multimodal import mean_token_loss, token_cross_entropy
from training import checkpoint
from training.data import MODALITY_NAMES
from training.dep import dep_loss_and_backward
from training.engine import Engine, verify_or_fail
from training.loader import LoaderStateError, StreamingLoader
from training.program import RunContext, program_args
from training.reporting import Reporter, fail
from training.runtime import rank_env
from training.siglip import siglip_loss
from training.spec import STAGES as ALL_STAGES
from training.spec import StageInputs, StageSpec, phase_dirs

STAGES = tuple(s.name for s in ALL_STAGES if s.program == "training.pretrain")  # this program's stages


def modality_loss_sums(token_loss: torch.Tensor, targets: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """[sum, count] of the per-position loss over the counted targets of each modality in
    MODALITY_NAMES order, as one float64 vector (all-reduce it to combine ranks)."""
    valid = targets != -100
    modality = modality.to(token_loss.device)
    parts = []
    for code in MODALITY_NAMES:
        m = valid & (modality == code)
        parts += [token_loss.detach().double()[m].sum(), m.sum().double()]
    return torch.stack(parts)


def modality_metrics(sums: torch.Tensor) -> dict[str, float]:
    """`loss_<modality>` for each modality with at least one target."""
    out = {}
    for i, name in enumerate(MODALITY_NAMES.values()):
        total, count = float(sums[2 * i]), float(sums[2 * i + 1])
        if count > 0:
            out[f"loss_{name}"] = total / count
    return out


def caption_and_siglip_losses(engine: Engine, tokens, targets, batch):
    """Per-position caption loss and the SigLIP loss from one embedding pass: the spliced input
    embeddings give both the image side (the item's vision tokens) and the text side (its caption)."""
    model, vocab = engine.model, engine.vocab
    h = model.embed(tokens, batch.vision_items)
    logits = model.backbone.forward_embeddings(h, batch.attn_mask.to(tokens.device), None, None)
    contrastive = siglip_loss(h, tokens, vocab.media_pad, vocab.media_end, vocab.eos,
                              engine.spec.train.siglip_temperature, engine.spec.train.siglip_bias)
    return token_cross_entropy(logits, targets), contrastive


def train(engine: Engine) -> None:
    """The training loop of one engine on the streaming loader: a whole stage, or one phase."""
    cfg = engine.spec
    try:  # data parallel only for now: the DP rank is the global rank
        loader = StreamingLoader.from_spec(engine.mixture, engine.vocab, cfg.data, cfg.train.seed, cfg.train.steps,
                                           engine.rank, engine.world, state=engine.loader_state or None)
    except LoaderStateError as e:
        fail(f"cannot resume the data loader: {e}")
    if engine.step != loader.delivered:
        fail(f"checkpoint step {engine.step} but the loader state has delivered {loader.delivered} batches")
    device = engine.device
    distributed = dist.is_initialized() and engine.world > 1
    use_dep = cfg.parallel.dep and distributed

    def step_fn(step: int):
        b = loader.batch(step)
        tokens, targets = b.tokens.to(device), b.targets.to(device)
        if use_dep:  # every rank, every step (collective), also for text-only batches
            stats: dict = {}
            loss = dep_loss_and_backward(engine.model, tokens, targets, b.attn_mask.to(device), b.vision_items,
                                         stats=stats)
            token_loss = stats["token_loss"]
        elif cfg.train.siglip_weight > 0:
            token_loss, contrastive = caption_and_siglip_losses(engine, tokens, targets, b)
            loss = mean_token_loss(token_loss, targets)
            if contrastive is not None:
                loss = loss + cfg.train.siglip_weight * contrastive
        else:
            token_loss = engine.model.token_losses(tokens, targets, b.vision_items, b.attn_mask.to(device))
            loss = mean_token_loss(token_loss, targets)
        total = b.text_tokens + b.vision_tokens
        metrics = {"vision_token_ratio": b.vision_tokens / max(1, total)}
        if cfg.train.siglip_weight > 0 and not use_dep and contrastive is not None:
            metrics["loss_siglip"] = float(contrastive)  # this rank's batch (pairs never cross ranks)
        if b.modality is not None:  # every rank has it (same loader), so the all-reduce is collective
            sums = modality_loss_sums(token_loss, targets, b.modality)
            if distributed:
                dist.all_reduce(sums)
            metrics.update(modality_metrics(sums))
        if (step + 1) % cfg.data.ratio_log_every == 0:
            window = loader.window_ratio(cfg.data.ratio_log_every)
            engine.reporter.metrics(step + 1, {"vision_token_ratio_window": window})
        return loss, metrics, total

    try:
        engine.fit(step_fn, loader.state_dict)
    finally:
        loader.close()


# ----------------------------------------------------------------------------------------------
# Phases


def run_phases(spec: StageSpec, run: RunContext) -> None:
    """Train the phases of `spec` in order (see the module docstring); each phase's own spec
    was resolved with the stage's, only its inputs (run dir, starting checkpoint) are set here."""
    phases, inputs = spec.phases, spec.inputs
    dirs = phase_dirs(spec)
    # Every rank reads the same committed state before any rank can write (writes are collective).
    # Each phase folder's committed manifest is read once here.
    try:
        latest = [None if run.resume == "never" else checkpoint.latest(d) for d in dirs]
        manifests = [checkpoint.read_manifest(u) if u else None for u in latest]
    except checkpoint.CheckpointError as e:
        fail(str(e))
    if run.resume == "must" and not any(latest):
        fail(f"--resume must: no committed checkpoint under {inputs.run_dir} (in any of its phase directories "
             f"{', '.join(dirs)})")
    mixture = verify_or_fail(inputs.mixture)  # read once for every phase

    reporter = Reporter(rank_env()[0], spec.stage, run.tracking_uri, run.mlflow_run_id)
    reporter.plan_steps = sum(p.steps for p in phases)
    init, offset, stop = inputs.init_from, 0, False
    for k, (phase, run_dir) in enumerate(zip(phases, dirs)):
        last = k == len(phases) - 1
        label = f"phase {k + 1}/{len(phases)} {phase.name!r}"
        if k > 0 and manifests[k] is not None:
            started_from = manifests[k][0].get("init_from")
            if started_from != (init.uri if init else None):
                fail(f"{label} in {run_dir} was started from {started_from}, but the phase before it now ends at "
                     f"{init.uri}; resume with the same phase lengths, or use a new run dir or --resume never")
        if not last and manifests[k] is not None and manifests[k][0]["step"] >= phase.steps:
            reporter.log(f"{label}: complete at {latest[k]}, skipped")
            init, offset = checkpoint.CheckpointRef.from_manifest(latest[k], *manifests[k]), offset + phase.steps
            continue
        pspec = phase.spec.model_copy(update={"inputs": StageInputs(mixture=inputs.mixture, run_dir=run_dir,
                                                                    init_from=init)})
        prun = dataclasses.replace(run, resume="auto" if run.resume == "must" else run.resume,
                                   mlflow_run_id=reporter.run_id)
        reporter.log(f"{label}: {phase.steps} steps, seq_len {pspec.data.seq_len}, yarn_factor "
                     f"{pspec.train.yarn_factor}, batch_size {pspec.data.batch_size}, trainable "
                     f"{','.join(pspec.train.trainable)}, from {init.uri if init else None}, "
                     f"metric steps {offset + 1}..{offset + phase.steps}")
        reporter.step_offset, reporter.phase_label = offset, f"phase {k + 1}/{len(phases)} {phase.name}"
        engine = Engine(pspec, prun, reporter=reporter, last=last, mixture=mixture)
        # A SIGTERM caught between phases (by the previous engine's handler) stops this one at its
        # first step, after a checkpoint: the usual save-and-exit.
        engine._stop = engine._stop or stop
        train(engine)
        stop = engine._stop
        del engine
        gc.collect()
        init, offset = checkpoint.CheckpointRef.at(checkpoint.latest(run_dir)), offset + phase.steps


def main(argv: list[str] | None = None) -> None:
    spec, run = program_args(STAGES, argv)
    if spec.phases:
        run_phases(spec, run)
    else:
        train(Engine(spec, run))


if __name__ == "__main__":
    main()
