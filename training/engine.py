"""The training loop shared by every stage program (first version, data parallel on gloo/NCCL).

A stage program builds an `Engine` from its command line, then calls `engine.fit(step_fn)` where
`step_fn(step)` returns the loss tensor and its metrics. The engine owns what every stage needs the
same way: process group, model construction and initialisation from the upstream checkpoint,
trainable-module selection, gradient all-reduce, WSD schedule, aux-loss-free router-bias update,
atomic checkpoints with exact resume, SIGTERM save-and-exit, metrics and the final report.
DeepSpeed ZeRO-1, MuonClip, expert parallelism and DEP arrive with the engine issue.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.distributed as dist

from model.config import ModelConfig, model_preset
from model.multimodal import K25Model
from training import checkpoint
from training.config import ConfigError, StageConfig, load_profile, stage_config
from training.data import Vocab, load_mixture, load_vocab
from training.muonclip import MuonClip, enable_max_logit_recording, muon_param_groups, qk_clip, read_max_logits
from training.reporting import Reporter, Throughput, fail, rank_env


@dataclass
class RunArgs:
    stage: str
    profile: str
    overrides: dict[str, str]
    mixture: str
    run_dir: str
    init_from: str | None
    resume: str  # auto | must | never
    tracking_uri: str | None
    mlflow_run_id: str | None
    data_root: str


def parse_args(stages: tuple[str, ...], argv: list[str] | None = None) -> RunArgs:
    p = argparse.ArgumentParser(description="K2.5 stage program (run under torchrun)")
    p.add_argument("--stage", choices=stages, default=stages[0])
    p.add_argument("--profile", default="tiny", help="profile name: tiny, small, k25")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the stage config (repeatable)")
    p.add_argument("--mixture", required=True, help="URI of mixture.json (data + tokenizer)")
    p.add_argument("--run-dir", required=True, help="URI of this run's checkpoint folder")
    p.add_argument("--init-from", default=None, help="URI of the upstream stage's checkpoint")
    p.add_argument("--resume", choices=("auto", "must", "never"), default="auto",
                   help="auto: resume from run-dir/latest if present; must: fail if absent")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    p.add_argument("--mlflow-run-id", default=None)
    p.add_argument("--data-root", default=os.environ.get("K25_DATA_ROOT", "../shared/data"))
    a = p.parse_args(argv)
    overrides = {}
    for item in a.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = value
    return RunArgs(a.stage, a.profile, overrides, a.mixture, a.run_dir, a.init_from, a.resume,
                   a.tracking_uri, a.mlflow_run_id, a.data_root)


def init_distributed() -> tuple[int, int]:
    rank, world, local_rank = rank_env()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restart == 0:
            dist.init_process_group(backend)
        else:
            # After torchrun restarts the group, the rendezvous store still holds the previous
            # attempt's addresses; a per-attempt key prefix keeps gloo/NCCL from dialling dead ranks.
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                  is_master=False, timeout=datetime.timedelta(seconds=300))
            dist.init_process_group(backend, store=dist.PrefixStore(f"k25/attempt{restart}/", store),
                                    rank=rank, world_size=world)
    return rank, world


def wsd_lr(cfg: StageConfig, step: int) -> float:
    """Warmup-stable-decay: linear warmup, constant, then linear decay to min_lr over the tail."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = int(cfg.steps * (1 - cfg.decay_fraction))
    if step < decay_start:
        return cfg.lr
    frac = (step - decay_start) / max(1, cfg.steps - decay_start)
    return cfg.lr * (1 - frac * (1 - cfg.min_lr_ratio))


class Engine:
    def __init__(self, args: RunArgs):
        # Validate everything cheap before the process group and the model exist.
        try:
            self.cfg = stage_config(args.profile, args.stage, args.overrides)
            self.profile = load_profile(args.profile)
        except ConfigError as e:
            fail(str(e))
        if args.init_from:
            try:
                self.init_manifest, _ = checkpoint.read_manifest(args.init_from)
            except checkpoint.CheckpointError as e:
                fail(str(e))
        self.args = args
        self.rank, self.world = init_distributed()
        self.device = torch.device(f"cuda:{rank_env()[2]}" if torch.cuda.is_available() else "cpu")
        self.reporter = Reporter(self.rank, args.stage, args.tracking_uri, args.mlflow_run_id)
        self.mixture = load_mixture(args.mixture)
        self.vocab: Vocab = load_vocab(self.mixture)
        self.model = self._build_model()
        self.trainable = self._select_trainable()
        self.optimizer = self._build_optimizer()
        self.step = 0
        self.loader_state: dict = {}
        self._stop = False
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._resume()

    # ---- construction
    def _build_model(self) -> K25Model:
        if self.args.init_from:
            mcfg = ModelConfig.from_dict(self.init_manifest["model_config"])
        else:
            mcfg = model_preset(self.profile.model, vocab_size=self.vocab.size)
        if mcfg.vocab_size != self.vocab.size:
            fail(f"upstream checkpoint vocab {mcfg.vocab_size} != tokenizer vocab {self.vocab.size}")
        mcfg.max_seq_len = max(mcfg.max_seq_len, self.cfg.seq_len)
        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank
        model = K25Model(mcfg, media_pad_id=self.vocab.media_pad)
        if self.args.init_from:
            state = checkpoint.load(self.args.init_from, self.rank, names=("model",))
            model.load_state_dict(state["model"])
            self.reporter.log(f"initialised from {self.args.init_from}")
        if self.cfg.yarn_factor is not None:
            model.backbone.set_yarn(self.cfg.yarn_factor)
        return model.to(self.device)

    def _select_trainable(self) -> list[torch.nn.Parameter]:
        groups = self.model.module_groups()
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = []
        for name in self.cfg.trainable:
            for p in groups[name].parameters():
                p.requires_grad_(True)
                params.append(p)
        return params

    def _build_optimizer(self) -> torch.optim.Optimizer:
        if self.cfg.optimizer == "muonclip":
            enable_max_logit_recording(self.model)  # QK-Clip needs each head's max logit
            return MuonClip(muon_param_groups(self.model, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay))
        decay = [p for p in self.trainable if p.dim() >= 2]
        no_decay = [p for p in self.trainable if p.dim() < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=self.cfg.lr, betas=(0.9, 0.95))

    # ---- resume
    def _resume(self) -> None:
        if self.args.resume == "never":
            return
        latest = checkpoint.latest(self.args.run_dir)
        if latest is None:
            if self.args.resume == "must":
                fail(f"--resume must: no committed checkpoint under {self.args.run_dir}")
            return
        state = checkpoint.load(latest, self.rank)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optim"])
        self.step = state["trainer"]["step"]
        # The loader state is per rank (each data-parallel rank reads its own shards); checkpoints
        # written before that kept rank 0's copy in the trainer object.
        self.loader_state = state["loader"] if "loader" in state else state["trainer"].get("loader", {})
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        self.reporter.log(f"resumed from {latest} at step {self.step}")

    def _on_sigterm(self, signum, frame) -> None:
        self._stop = True

    # ---- checkpoints
    def save(self, loader_state: dict) -> tuple[str, str, str | None]:
        meta = {"stage": self.args.stage, "profile": self.args.profile, "model_config": self.model.cfg.to_dict(),
                "stage_config": asdict(self.cfg), "tokenizer_digest": self.mixture["tokenizer"]["digest"],
                "mixture_digest": self.mixture["digest"], "init_from": self.args.init_from}
        shared = {"model": self.model.state_dict(), "optim": self.optimizer.state_dict(),
                  "trainer": {"step": self.step}}
        per_rank = {"rng": {"torch": torch.get_rng_state(), "python": random.getstate()}, "loader": loader_state}
        uri, digest = checkpoint.save(self.args.run_dir, self.step, shared, per_rank, meta)
        model_id = self.reporter.checkpoint(uri, digest, self.step, {"stage": self.args.stage, "step": self.step})
        self.reporter.log(f"checkpoint step {self.step} committed: {uri}")
        return uri, digest, model_id

    # ---- the loop
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
        return float(torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip))

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
        stats = qk_clip(self.model, self.cfg.qk_clip_tau, dict(zip(layers, stacked)))
        return {"max_attn_logit": float(stacked.max()),
                "qk_clipped_heads": float(sum(s["n_clipped"] for s in stats.values()))}

    def _update_router_bias(self) -> dict[str, float]:
        if "llm" not in self.cfg.trainable:
            return {}
        imbalance = []
        for moe in self.model.backbone.moe_layers():
            if moe.last_load is None:
                continue
            load = moe.last_load.float()
            if self.world > 1:
                dist.all_reduce(load)
            moe.update_bias(load, self.cfg.router_bias_rate)
            imbalance.append(float(load.max() / load.mean().clamp_min(1e-9)))
        return {"expert_load_max_over_mean": sum(imbalance) / len(imbalance)} if imbalance else {}

    def fit(self, step_fn: Callable[[int], tuple[torch.Tensor, dict[str, float], int]],
            loader_state: Callable[[], dict]) -> None:
        cfg = self.cfg
        losses: list[float] = []
        meter = Throughput()
        last_ckpt = None
        t0 = time.time()
        self.reporter.log(f"training {self.args.stage} for {cfg.steps} steps on {self.world} rank(s), from step {self.step}")
        while self.step < cfg.steps:
            lr = wsd_lr(cfg, self.step)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            loss, metrics, n_tokens = step_fn(self.step)
            if loss.requires_grad:  # a step_fn may run its own backward (DEP does)
                loss.backward()
            grad_norm = self._all_reduce_grads()
            self.optimizer.step()
            if self.cfg.optimizer == "muonclip":
                metrics.update(self._qk_clip())
            metrics.update(self._update_router_bias())
            loss_value = float(loss.detach())
            if self.world > 1:
                t = torch.tensor([loss_value], device=self.device)
                dist.all_reduce(t)
                loss_value = float(t) / self.world
            losses.append(loss_value)
            meter.add(n_tokens * self.world)
            self.step += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                metrics.update(loss=loss_value, lr=lr, grad_norm=grad_norm, tokens_per_s=meter.rate())
                self.reporter.metrics(self.step, metrics)
                extra = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k not in ("loss", "lr"))
                self.reporter.log(f"step {self.step}/{cfg.steps} loss {loss_value:.4f} {extra}")
            stop = self._agree_stop()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or stop:
                last_ckpt = self.save(loader_state())
            if stop:
                self.reporter.log(f"SIGTERM: saved step {self.step}, exiting")
                self.reporter.finish({}, None, ok=False)
                sys.exit(143)
        if last_ckpt is None:  # resumed at the final step: re-commit so the run reports a checkpoint
            last_ckpt = self.save(loader_state())
        self._report(last_ckpt, losses, time.time() - t0)

    def _agree_stop(self) -> bool:
        flag = torch.tensor([1.0 if self._stop else 0.0])
        if self.world > 1:
            dist.all_reduce(flag)  # every rank stops at the same step, so saves stay collective
        return bool(flag.item() > 0)

    def _report(self, ckpt: tuple[str, str, str | None], losses: list[float], seconds: float) -> None:
        uri, digest, model_id = ckpt
        head = losses[: max(1, len(losses) // 5)]
        tail = losses[-max(1, len(losses) // 5):]
        metadata = {
            "checkpoint_uri": uri, "checkpoint_digest": digest, "stage": self.args.stage,
            "profile": self.args.profile, "steps": self.step, "world_size": self.world,
            "loss_first": sum(head) / len(head) if head else float("nan"),
            "loss_last": sum(tail) / len(tail) if tail else float("nan"),
            "train_seconds": round(seconds, 2),
        }
        if model_id:
            metadata["mlflow_model_id"] = model_id
        for key, points in self.reporter.history.items():  # headline values of stage metrics
            if key not in ("loss", "lr"):
                metadata[f"last_{key}"] = round(points[-1][1], 5)
        plot = self.reporter.loss_plot_markdown(("loss",))
        if plot:
            metadata["loss_curve"] = plot
        self.reporter.finish(metadata, digest)
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

