"""The training loop shared by every stage program (first version, data parallel on gloo/NCCL).

A stage program builds an `Engine` from its resolved spec (never from argv), then calls `engine.fit(step_fn)` where
`step_fn(step)` returns the loss tensor and its metrics. The engine owns what every stage needs the
same way: process group, model construction and initialisation from the upstream checkpoint,
trainable-module selection, gradient all-reduce, WSD schedule, aux-loss-free router-bias update,
atomic checkpoints with exact resume, SIGTERM save-and-exit, metrics and the final report.
Options per stage (blocks of the spec, training/spec.py): `optimizer.name=muonclip` (Muon + QK-Clip),
`parallel.zero_stage=1` (ZeRO-1, training/zero.py), `parallel.expert_parallel=N` (experts sharded over
groups of N ranks, training/expert_parallel.py) and `parallel.dep=true` (training/dep.py).
Checkpoints always hold the full model (gathered from expert shards), so the next stage or the
evaluation loads them without knowing how they were trained; optimizer state that is partitioned
(ZeRO-1) or sharded (experts) is saved per rank.
"""

from __future__ import annotations

import datetime
import random
import signal
import sys
import time
from typing import Callable

import torch
import torch.distributed as dist

from infra import storage
from infra.spec import spec_params
from infra.tracking import DatasetRef
from model.multimodal import K25Model
from model.tokens import Vocab
from training import checkpoint
from training.data import load_vocab
from training.expert_parallel import ExpertParallelMoE, apply_expert_parallel, gather_moe_state_dict, sync_gradients
from training.expert_parallel import grad_norm as ep_grad_norm
from training.muonclip import MuonClip, enable_max_logit_recording, muon_param_groups, qk_clip, read_max_logits
from training.program import RunContext
from training.reporting import Reporter, Throughput, fail
from training.runtime import compute_init, rank_env
from training.spec import StageSpec, wsd_lr
from training.zero import ShardedOptimizer, check_resumable, load_partition, wrap_zero1

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOPPED_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect of a preempted job


class Engine:
    def __init__(self, spec: StageSpec, run: RunContext, reporter: Reporter | None = None, last: bool = True,
                 mixture: dict | None = None):
        # reporter, last: for a stage trained in phases (training/pretrain.py), one Reporter (one
        # Pipes session, one MLflow run) serves every phase, and a phase with last=False leaves it
        # and the process group open at the end of fit() for the next phase, which reports.
        # mixture: the manifest, when the caller has read it already (the phases share one read).
        self.spec, self.run, self.last = spec, run, last
        inputs = spec.inputs
        # Everything cheap is checked before the process group and the model exist; the spec was
        # validated when it was resolved, the inputs are read once here.
        # The reporter opens first (rank 0: Pipes and MLflow), so start-up itself shows progress.
        self.reporter = reporter or Reporter(rank_env()[0], spec.stage, run.tracking_uri, run.mlflow_run_id)
        self.reporter.log("verifying the inputs (mixture, upstream checkpoint)")
        self.init_manifest = verify_or_fail(inputs.init_from) if inputs.init_from else None
        self.mixture = mixture or verify_or_fail(inputs.mixture)
        self.rank, self.world, self.device = compute_init()
        ep = spec.parallel.expert_parallel
        if self.world % ep:
            fail(f"parallel.expert_parallel={ep} does not divide the world size {self.world}")
        self.reporter.log(f"process group up: {self.world} rank(s) on {self.device}; building the model")
        self.vocab: Vocab = load_vocab(self.mixture)
        self.dataset = DatasetRef("mixture", self.mixture["digest"], inputs.mixture.uri)
        self.model = self._build_model()
        resume_state = self._load_resume_state()  # full weights go in before experts are sharded
        self.ep_group, self.expert_dp_group = self._setup_expert_parallel()
        self.trainable = self._select_trainable()
        self.optimizer = self._build_optimizer()
        self.ds_engine = None
        if spec.parallel.zero_stage == 1 and spec.optimizer.name == "adamw":
            self.ds_engine, self.optimizer = wrap_zero1(self.model, self.optimizer, spec)
        self.step = 0
        self.last_loss: float | None = None  # the loss of the last step trained (this run or the checkpoint's)
        self.loader_state: dict = {}
        self.report_metadata: dict = {}  # a stage's own facts for its final report (e.g. RL's Toggle budgets)
        self._stop = False
        # A stop from the Dagster UI arrives as SIGINT (Pipes forwards it, torchrun passes it to every
        # rank), preemption as SIGTERM: both take one path, so a stop never loses work. Raising
        # KeyboardInterrupt instead would kill rank 0 mid-collective and leave no checkpoint.
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)
        self._restore_training_state(resume_state)

    # ---- construction
    def _build_model(self) -> K25Model:
        spec, init = self.spec, self.spec.inputs.init_from
        torch.manual_seed(spec.train.seed)  # identical initial weights on every rank
        if init is not None:
            model = checkpoint.load_model(init, "cpu", manifest=self.init_manifest, max_seq_len=spec.data.seq_len)
            self.reporter.log(f"initialised from {init.uri}")
        else:
            model = checkpoint.fresh_model(spec.model, self.vocab, max_seq_len=spec.data.seq_len)
        if model.cfg.vocab_size != self.vocab.size:
            fail(f"upstream checkpoint vocab {model.cfg.vocab_size} != tokenizer vocab {self.vocab.size}")
        if spec.train.yarn_factor is not None:
            model.backbone.set_yarn(spec.train.yarn_factor)
        return model.to(self.device)

    def _setup_expert_parallel(self):
        """(EP group, expert data-parallel group). Groups of `expert_parallel` consecutive ranks
        share one copy of the experts; ranks at the same position in different groups hold the same
        expert shard and average its gradients (None when there is only one EP group)."""
        ep = self.spec.parallel.expert_parallel
        if ep == 1:
            return None, None
        if self.model.cfg.n_experts % ep:
            fail(f"expert_parallel={ep} does not divide the model's {self.model.cfg.n_experts} experts")
        # new_group is collective over the world: every rank creates every group, in the same order
        ep_groups = [dist.new_group(list(range(i, i + ep))) for i in range(0, self.world, ep)]
        dp_groups = [dist.new_group(list(range(j, self.world, ep))) for j in range(ep)]
        apply_expert_parallel(self.model, ep_groups[self.rank // ep])
        self.reporter.log(f"expert parallelism: {self.world // ep} group(s) of {ep} ranks, "
                          f"{self.model.cfg.n_experts // ep} experts per rank")
        return ep_groups[self.rank // ep], (dp_groups[self.rank % ep] if self.world > ep else None)

    def _select_trainable(self) -> list[torch.nn.Parameter]:
        groups = self.model.module_groups()
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = []
        for name in self.spec.train.trainable:
            for p in groups[name].parameters():
                p.requires_grad_(True)
                params.append(p)
        return params

    def _build_optimizer(self) -> torch.optim.Optimizer:
        if self.spec.optimizer.name == "muonclip":
            enable_max_logit_recording(self.model)  # QK-Clip needs each head's max logit
            groups = muon_param_groups(self.model, lr=self.spec.optimizer.lr, weight_decay=self.spec.optimizer.weight_decay)
            if self.spec.parallel.zero_stage == 1:  # optimizer state sharded by whole matrices (training/zero.py)
                return ShardedOptimizer(MuonClip, groups, self.rank, self.world)
            return MuonClip(groups)
        decay = [p for p in self.trainable if p.dim() >= 2]
        no_decay = [p for p in self.trainable if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.spec.optimizer.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # no empty groups: DeepSpeed flattens each group into one buffer
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.spec.optimizer.lr, betas=(0.9, 0.95))

    @property
    def optimizer_per_rank(self) -> bool:
        """Optimizer state differs per rank (ZeRO partitions, expert shards): saved per rank."""
        return self.spec.parallel.zero_stage == 1 or self.spec.parallel.expert_parallel > 1

    # ---- resume
    def _load_resume_state(self) -> dict | None:
        """This rank's view of run_dir/latest (model weights loaded into the still-full model), or
        None for a fresh start. Layout mismatches fail here, before any training."""
        if self.run.resume == "never":
            return None
        run_dir = self.spec.inputs.run_dir
        latest = checkpoint.latest(run_dir)
        if latest is None:
            if self.run.resume == "must":
                fail(f"--resume must: no committed checkpoint under {run_dir}")
            return None
        manifest, _ = checkpoint.read_manifest(latest)
        why = check_resumable(manifest, self.world)
        for key in ("zero_stage", "expert_parallel"):
            if manifest.get(key, 0 if key == "zero_stage" else 1) != getattr(self.spec.parallel, key):
                why = (f"checkpoint {latest} was written with parallel.{key}={manifest.get(key)}, this run has "
                       f"parallel.{key}={getattr(self.spec.parallel, key)}; resume with the same setting")
        if why:
            fail(f"cannot resume: {why}")
        state = checkpoint.load(latest, self.rank)
        self.model.load_state_dict(state["model"])
        state["uri"] = latest
        return state

    def _restore_training_state(self, state: dict | None) -> None:
        if state is None:
            return
        latest = state["uri"]
        if self.ds_engine is not None:
            load_partition(self.optimizer, state["optim"], self.rank, self.world)
        else:
            self.optimizer.load_state_dict(state["optim"])
        self.step = state["trainer"]["step"]
        self.last_loss = state["trainer"].get("loss")  # what a run resumed at its last step reports
        # The loader state is per rank (each data-parallel rank reads its own shards); checkpoints
        # written before that kept rank 0's copy in the trainer object.
        self.loader_state = state["loader"] if "loader" in state else state["trainer"].get("loader", {})
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        self.reporter.log(f"resumed from {latest} at step {self.step}")

    def _on_stop_signal(self, signum, frame) -> None:
        self._stop = signal.Signals(signum).name

    # ---- checkpoints
    def save(self, loader_state: dict) -> checkpoint.CheckpointRef:
        spec = self.spec
        init = spec.inputs.init_from
        meta = {"stage": spec.stage, "profile": spec.profile, "model_config": self.model.cfg.to_dict(),
                "media_pad_id": self.vocab.media_pad, "spec": spec.model_dump(mode="json", exclude={"inputs"}),
                "tokenizer_digest": self.mixture["tokenizer"]["digest"], "mixture_digest": self.mixture["digest"],
                "init_from": init.uri if init else None,
                "zero_stage": spec.parallel.zero_stage, "expert_parallel": spec.parallel.expert_parallel}
        model_state = self.model.state_dict()
        if self.ep_group is not None:  # collective: the full experts, so any stage can load the checkpoint
            model_state = gather_moe_state_dict(model_state, self.ep_group)
        shared = {"model": model_state, "trainer": {"step": self.step, "loss": self.last_loss}}
        per_rank = {"rng": {"torch": torch.get_rng_state(), "python": random.getstate()}, "loader": loader_state}
        (per_rank if self.optimizer_per_rank else shared)["optim"] = self.optimizer.state_dict()
        uri, digest = checkpoint.save(spec.inputs.run_dir, self.step, shared, per_rank, meta)
        model_id = self.reporter.checkpoint(uri, digest, self.step, spec_params(spec))
        self.reporter.log(f"checkpoint step {self.step} committed: {uri}")
        return checkpoint.CheckpointRef(uri=uri, digest=digest, stage=spec.stage, step=self.step, model_id=model_id,
                                        profile=spec.profile)

    # ---- the loop
    def _backward(self, loss: torch.Tensor) -> None:
        if self.ds_engine is not None:
            self.ds_engine.backward(loss)  # ZeRO reduces gradients into each rank's partition
        else:
            loss.backward()

    def _optimizer_step(self) -> float:
        """Synchronise gradients, clip and step; returns the global gradient norm (before clipping)."""
        if self.ds_engine is not None:
            self.ds_engine.step()  # averaged grads, clipping (gradient_clipping), partition update, all-gather
            norm = self.ds_engine.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
        if self.ep_group is not None:
            norm = self._sync_expert_parallel_grads()
        else:
            norm = self._all_reduce_grads()
        self.optimizer.step()
        return norm

    def _sync_expert_parallel_grads(self) -> float:
        """Expert shards already hold their EP group's summed gradient; replicated parameters are
        averaged over the world. The norm counts each expert shard once (summed over the EP group)."""
        sync_gradients(self.trainable, self.world, None, self.expert_dp_group)
        norm = ep_grad_norm(self.trainable, self.ep_group)
        coef = torch.clamp(self.spec.optimizer.grad_clip / (norm + 1e-6), max=1.0)  # as clip_grad_norm_
        for p in self.trainable:
            if p.grad is not None:
                p.grad.mul_(coef)
        return float(norm)

    def _all_reduce_grads(self) -> float:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.trainable]
        flat = torch.cat([g.reshape(-1) for g in grads])
        if self.world > 1:
            dist.all_reduce(flat)
            flat /= self.world
        offset = 0
        for p in self.trainable:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n
        return float(torch.nn.utils.clip_grad_norm_(self.trainable, self.spec.optimizer.grad_clip))

    def _qk_clip(self) -> dict[str, float]:
        """Per-head QK-Clip on the max logits of this step, maxed over all ranks first so every
        rank clips the same heads and the replicas stay identical."""
        logits = read_max_logits(self.model)
        if not logits:
            return {}
        layers = sorted(logits)
        stacked = torch.stack([logits[i].float() for i in layers])
        if self.world > 1:
            dist.all_reduce(stacked, op=dist.ReduceOp.MAX)
        stats = qk_clip(self.model, self.spec.optimizer.qk_clip_tau, dict(zip(layers, stacked)))
        return {"max_attn_logit": float(stacked.max()),
                "qk_clipped_heads": float(sum(s["n_clipped"] for s in stats.values()))}

    def _update_router_bias(self) -> dict[str, float]:
        if "llm" not in self.spec.train.trainable:
            return {}
        imbalance = []
        for moe in self.model.backbone.moe_layers():
            if moe.last_load is None:
                continue
            # EP layers report the EP group's load in last_load; all-reduce the rank's own counts
            own = moe.last_local_load if isinstance(moe, ExpertParallelMoE) else moe.last_load
            load = own.float()
            if self.world > 1:
                dist.all_reduce(load)
            moe.update_bias(load, self.spec.train.router_bias_rate)
            imbalance.append(float(load.max() / load.mean().clamp_min(1e-9)))
        return {"expert_load_max_over_mean": sum(imbalance) / len(imbalance)} if imbalance else {}

    def fit(self, step_fn: Callable[[int], tuple[torch.Tensor, dict[str, float], int]],
            loader_state: Callable[[], dict], after: Callable[[], dict[str, float]] | None = None) -> None:
        """Train to `train.steps`, committing checkpoints. `after` (collective) measures the final
        weights, e.g. the GRM's held-out accuracy; its figures are logged against the final
        checkpoint's LoggedModel and join the stage's report."""
        cfg = self.spec
        losses: list[float] = []
        meter = Throughput()
        last_ckpt = None
        t0, start_step = time.time(), self.step
        self.reporter.log(f"training {self.spec.stage} for {cfg.train.steps} steps on {self.world} rank(s), from step {self.step}")
        while self.step < cfg.train.steps:
            lr = wsd_lr(cfg, self.step)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            loss, metrics, n_tokens = step_fn(self.step)
            # a step_fn may ask to skip the update (RL: every group skipped on every rank, so the
            # decision is the same everywhere); momentum and weight decay must not move the weights
            skip = bool(metrics.pop("skip_update", 0.0))
            if loss.requires_grad and not skip:  # a step_fn may run its own backward (DEP does)
                self._backward(loss)
            grad_norm = 0.0 if skip else self._optimizer_step()
            if skip:
                metrics["updates_skipped"] = 1.0
            elif self.spec.optimizer.name == "muonclip" and "llm" in self.spec.train.trainable:  # never rescale frozen q/k
                metrics.update(self._qk_clip())
            if not skip:
                metrics.update(self._update_router_bias())
            loss_value = float(loss.detach())
            if self.world > 1:
                t = torch.tensor([loss_value], device=self.device)
                dist.all_reduce(t)
                loss_value = float(t) / self.world
            losses.append(loss_value)
            self.last_loss = loss_value
            meter.add(n_tokens * self.world)
            self.step += 1
            stop = self._agree_stop()
            committed = None
            if self.step % cfg.checkpoint.every == 0 or self.step == cfg.train.steps or stop:
                last_ckpt = committed = self.save(loader_state())
            if committed is not None or self.step % cfg.train.log_every == 0:
                # Checkpoint steps always log: those values are the checkpoint's, shown on its
                # LoggedModel page with the data set they were measured on.
                metrics.update(loss=loss_value, lr=lr, grad_norm=grad_norm, tokens_per_s=meter.rate())
                self.reporter.metrics(self.step, metrics, model_id=committed.model_id if committed else None,
                                      dataset=self.dataset if committed else None)
                self.reporter.log(self._progress_line(metrics, start_step, t0))
            if stop:
                self.reporter.log(f"stopped by {self._stop or 'another rank'}: committed step {self.step} "
                                  f"({last_ckpt.uri}); --resume continues from it")
                self.reporter.finish({}, None, ok=False)
                sys.exit(STOPPED_EXIT_CODE)
        if last_ckpt is None:  # resumed at the final step: re-commit so the run reports a checkpoint
            last_ckpt = self.save(loader_state())
        if after is not None:
            self.model.eval()
            figures = after()
            self.reporter.metrics(self.step, figures, model_id=last_ckpt.model_id, dataset=self.dataset)
            self.report_metadata.update({k: round(v, 5) for k, v in figures.items()})
            self.reporter.log("final weights: " + " ".join(f"{k} {v:.4g}" for k, v in figures.items()))
        self._report(last_ckpt, losses, time.time() - t0)

    def _progress_line(self, metrics: dict[str, float], start_step: int, t0: float) -> str:
        """`step 9/20 (phase 2/3 ctx1k: 3/4) loss 2.31 ... | 1.2 s/step, ETA 0:00:13`: the step of
        the whole stage (phases continue one count), and the time left at this run's pace."""
        r, cfg = self.reporter, self.spec
        done, total = r.step_offset + self.step, r.plan_steps or cfg.train.steps
        phase = f" ({r.phase_label}: {self.step}/{cfg.train.steps})" if r.phase_label else ""
        per_step = (time.time() - t0) / max(1, self.step - start_step)
        eta = datetime.timedelta(seconds=round(per_step * (total - done)))
        # per-domain metrics (keys with a "/") go to MLflow only: the line stays readable
        extra = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k not in ("loss", "lr") and "/" not in k)
        return f"step {done}/{total}{phase} loss {metrics['loss']:.4f} {extra} | {per_step:.2f} s/step, ETA {eta}"

    def _agree_stop(self) -> bool:
        flag = torch.tensor([1.0 if self._stop else 0.0])
        if self.world > 1:
            dist.all_reduce(flag)  # every rank stops at the same step, so saves stay collective
        return bool(flag.item() > 0)

    def _report(self, ckpt: checkpoint.CheckpointRef, losses: list[float], seconds: float) -> None:
        if not self.last:  # a later phase of this stage reports
            return
        if not losses and self.last_loss is not None:  # resumed at the last step: nothing trained now
            losses = [self.last_loss]
        head = losses[: max(1, len(losses) // 5)]
        tail = losses[-max(1, len(losses) // 5):]
        metadata = {
            **ckpt.to_metadata(), "world_size": self.world,
            "loss_first": sum(head) / len(head) if head else float("nan"),
            "loss_last": sum(tail) / len(tail) if tail else float("nan"),
            "train_seconds": round(seconds, 2),
        }
        metadata.update(self.report_metadata)
        for key, points in self.reporter.history.items():  # headline values of stage metrics
            if key not in ("loss", "lr") and key not in self.report_metadata:
                metadata[f"last_{key}"] = round(points[-1][1], 5)
        png = self.reporter.curves_png()
        if png:  # by reference: a Pipes message carrying the image could reach Dagster cut short
            metadata["curves_uri"] = storage.join(self.spec.inputs.run_dir, f"curves-step{self.step:06d}.png")
            storage.write_bytes(metadata["curves_uri"], png)
        self.reporter.finish(metadata, ckpt.digest)
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()



def verify_or_fail(ref):
    """What a reference points to (its manifest), or a clear exit before any training."""
    try:
        return ref.verify()
    except LookupError as e:
        fail(str(e))
