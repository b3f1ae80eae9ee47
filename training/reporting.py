"""Rank-0 reporting: Dagster Pipes (when launched by Dagster) and MLflow (when a run is given).

Only rank 0 may open Pipes: torchrun hands the Pipes bootstrap variables to every rank, and two
ranks reporting one materialization fail the Dagster step. Every other rank gets a reporter whose
methods do nothing, so training code calls it unconditionally.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import time

from infra.tracking import DatasetRef, Tracker


class Reporter:
    def __init__(self, rank: int, stage: str, tracking_uri: str | None, run_id: str | None, experiment: str = "k25"):
        self.active = rank == 0
        self.stage = stage
        self.run_id = run_id
        self.tracker: Tracker | None = None
        self.pipes = None
        self._exit = contextlib.ExitStack()
        self._pending = []
        self.history: dict[str, list[tuple[int, float]]] = {}
        # Added to every metric step: the phases of a stage (training/pretrain.py) share one
        # reporter and log one continuous curve (phase offset + step within the phase).
        self.step_offset = 0
        self.plan_steps: int | None = None  # steps of the whole stage, all phases (None: this engine's)
        self.phase_label = ""  # "phase 2/3 ctx1k" while a phase of several trains
        self.owns_run = False
        if not self.active:
            return
        from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

        if DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ:  # launched by Dagster
            self.pipes = self._exit.enter_context(open_dagster_pipes(message_writer=_message_writer()))
        if tracking_uri:
            self.tracker = Tracker(tracking_uri, experiment)
            if self.run_id is None:  # standalone run: our own MLflow run, ended in finish()
                self.owns_run = True
                self.run_id = self.tracker.client.create_run(self.tracker.experiment_id, run_name=stage,
                                                             tags={"k25.stage": stage}).info.run_id
            self._start_system_metrics(tracking_uri)

    def _start_system_metrics(self, tracking_uri: str) -> None:
        """CPU, memory, disk, network (and GPU where there is one) as `system/*` metrics of the run,
        sampled by MLflow's monitor every 5 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides) on
        rank 0's node, and once more when finish() stops it."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=5, samples_before_logging=1,
                                       resume_logging=True, tracking_uri=tracking_uri)
        monitor.start()

        def stop() -> None:  # the monitor drops a sample cut short by its stop: take a last one
            monitor.finish()
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()

        self._exit.callback(stop)

    def log(self, message: str) -> None:
        if not self.active:
            return
        if self.pipes is not None:  # shown in the Dagster event log; stdout would repeat it
            self.pipes.log.info(message)
        else:
            print(f"[{self.stage}] {message}", flush=True)

    def metrics(self, step: int, values: dict[str, float], model_id: str | None = None,
                dataset: DatasetRef | None = None) -> None:
        """Log values at `step` (of this phase); with `model_id` (and the `dataset` they were
        measured on) they also show on that LoggedModel's page."""
        if not self.active:
            return
        step += self.step_offset
        for k, v in values.items():
            self.history.setdefault(k, []).append((step, float(v)))
        if self.tracker and self.run_id:
            self._pending.append(self.tracker.log_metrics(self.run_id, values, step, model_id=model_id, dataset=dataset))

    def checkpoint(self, uri: str, digest: str, step: int, params: dict | None = None) -> str | None:
        """Register a committed checkpoint as an MLflow LoggedModel; returns its model id."""
        if not (self.active and self.tracker and self.run_id):
            return None
        return self.tracker.register_checkpoint(self.run_id, self.stage, uri, digest, step + self.step_offset, params)

    def curves_png(self) -> bytes | None:
        """A PNG of the stage's curves, logged to MLflow: the total and per-modality losses (and
        any other `loss_*`) on the left, the realised vision token share and the stage's reward
        (RL, PARL; for PARL also sub-agents per episode and item-F1) on the right when they were logged."""
        losses = {k: v for k, v in self.history.items() if k == "loss" or k.startswith("loss_")}
        others = {k: v for k, v in self.history.items()
                  if k.startswith(("vision_token_ratio", "reward/")) or k in ("reward_mean", "swarm_subagents", "swarm_r_perf")}
        if not self.active or not losses:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [("loss", losses)] + ([("vision share / reward", others)] if others else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3), dpi=80, squeeze=False)
        for ax, (title, series) in zip(axes[0], panels):
            for k, pts in sorted(series.items()):
                ax.plot([s for s, _ in pts], [v for _, v in pts], label=k, marker="." if len(pts) < 30 else None)
            ax.set_xlabel("step")
            ax.set_title(f"{self.stage}: {title}")
            ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        png = buf.getvalue()
        if self.tracker and self.run_id:
            self.tracker.client.log_image(self.run_id, _png_to_image(png), artifact_file=f"plots/{self.stage}_curves.png")
        return png

    def finish(self, metadata: dict, data_version: str | None, ok: bool = True) -> None:
        if not self.active:
            return
        for op in self._pending:
            if op is not None:
                op.wait()
        if self.tracker and self.run_id:
            metadata = {**metadata, "mlflow_run_id": self.run_id}
        if self.pipes is not None and ok:
            self.pipes.report_asset_materialization(metadata=_pipes_metadata(metadata), data_version=data_version)
        if self.owns_run:  # a run Dagster opened is ended by its asset (MlflowTracking.stage_run)
            self.tracker.finish(self.run_id, "FINISHED" if ok else "KILLED")
        self._exit.close()


def _message_writer():
    """The Pipes channel the launcher chose: S3 when its parameters name a bucket (a program off
    the orchestrator's machine), else Pipes' default (a local file)."""
    from dagster_pipes import (
        DAGSTER_PIPES_MESSAGES_ENV_VAR,
        PipesDefaultMessageWriter,
        PipesS3MessageWriter,
        decode_env_var,
    )

    raw = os.environ.get(DAGSTER_PIPES_MESSAGES_ENV_VAR)
    if raw and "bucket" in decode_env_var(raw):
        from infra import storage

        return PipesS3MessageWriter(storage.s3_client(), interval=2)
    return PipesDefaultMessageWriter()


def _png_to_image(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png))


def _pipes_metadata(metadata: dict) -> dict:
    """Typed Pipes metadata: markdown and URLs render as such in the Dagster UI."""
    out = {}
    for k, v in metadata.items():
        if isinstance(v, str) and v.startswith("![") or k.endswith("_md"):
            out[k] = {"raw_value": v, "type": "md"}
        elif isinstance(v, float) and not math.isfinite(v):
            out[k] = {"raw_value": str(v), "type": "text"}  # JSON has no NaN; the check reads it as text
        else:
            out[k] = v
    return out



class Throughput:
    def __init__(self):
        self.t0, self.tokens = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.tokens += n

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        r = self.tokens / dt if dt > 0 else 0.0
        self.t0, self.tokens = time.perf_counter(), 0
        return r


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)
