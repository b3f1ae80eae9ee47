"""Rank-0 reporting: Dagster Pipes (when launched by Dagster) and MLflow (when a run is given).

Only rank 0 may open Pipes: torchrun hands the Pipes bootstrap variables to every rank, and two
ranks reporting one materialization fail the Dagster step. Every other rank gets a reporter whose
methods do nothing, so training code calls it unconditionally.
"""

from __future__ import annotations

import base64
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
        self.owns_run = False
        if not self.active:
            return
        from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

        if DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ:  # launched by Dagster
            self.pipes = self._exit.enter_context(open_dagster_pipes())
        if tracking_uri:
            self.tracker = Tracker(tracking_uri, experiment)
            if self.run_id is None:  # standalone run: our own MLflow run, ended in finish()
                self.owns_run = True
                self.run_id = self.tracker.client.create_run(self.tracker.experiment_id, run_name=stage,
                                                             tags={"k25.stage": stage}).info.run_id

    def log(self, message: str) -> None:
        if not self.active:
            return
        if self.pipes is not None:  # shown in the Dagster event log; stdout would repeat it
            self.pipes.log.info(message)
        else:
            print(f"[{self.stage}] {message}", flush=True)

    def metrics(self, step: int, values: dict[str, float], model_id: str | None = None) -> None:
        """Log values at `step` (of this phase); with `model_id` they show on that model's page."""
        if not self.active:
            return
        step += self.step_offset
        for k, v in values.items():
            self.history.setdefault(k, []).append((step, float(v)))
        if self.tracker and self.run_id:
            self._pending.append(self.tracker.log_metrics(self.run_id, values, step, model_id=model_id))

    def latest(self) -> dict[str, float]:
        """The last logged value of every metric."""
        return {k: points[-1][1] for k, points in self.history.items()}

    def checkpoint(self, uri: str, digest: str, step: int, params: dict | None = None,
                   dataset: DatasetRef | None = None) -> str | None:
        """Register a committed checkpoint as an MLflow LoggedModel, with the latest metrics
        measured on `dataset`; returns its model id."""
        if not (self.active and self.tracker and self.run_id):
            return None
        return self.tracker.register_checkpoint(self.run_id, self.stage, uri, digest, step + self.step_offset, params,
                                                self.latest(), dataset)

    def loss_plot_markdown(self, keys: tuple[str, ...] = ("loss",)) -> str | None:
        """A PNG of the metric curves, logged to MLflow and returned as markdown for Dagster."""
        series = {k: self.history[k] for k in keys if k in self.history}
        if not self.active or not series:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
        for k, pts in series.items():
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=k)
        ax.set_xlabel("step")
        ax.set_title(self.stage)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        png = buf.getvalue()
        if self.tracker and self.run_id:
            self.tracker.client.log_image(self.run_id, _png_to_image(png), artifact_file=f"plots/{self.stage}_curves.png")
        return f"![{self.stage} curves](data:image/png;base64,{base64.b64encode(png).decode()})"

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
