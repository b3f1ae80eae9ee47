"""The Dagster Definitions of the K2.5 pipeline.

    dagster dev -m pipelines                          # UI at http://127.0.0.1:3000
    dagster asset materialize -m pipelines --select '*'
"""

from __future__ import annotations

import dagster as dg

from assets import curated_data, evaluation, joint_pretrain, midtrain, mixture, parl, rl, sft, tokenizer, vit_warmup
from assets.evaluation import evaluation_job, new_checkpoint_evaluation, nightly_evaluation
from pipelines.resources import (
    ArtifactStore,
    MlflowTracking,
    TorchrunLauncher,
    default_artifact_root,
    default_tracking_uri,
)

ASSET_MODULES = [curated_data, tokenizer, mixture, vit_warmup, joint_pretrain, midtrain, sft, rl, parl, evaluation]


def build_definitions(artifact_root: str | None = None, tracking_uri: str | None = None,
                      nproc_per_node: int = 0) -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules(ASSET_MODULES),
        asset_checks=dg.load_asset_checks_from_modules(ASSET_MODULES),
        jobs=[evaluation_job],
        schedules=[nightly_evaluation],
        sensors=[new_checkpoint_evaluation],
        resources={
            "artifacts": ArtifactStore(root=artifact_root or default_artifact_root()),
            "mlflow": MlflowTracking(tracking_uri=tracking_uri or default_tracking_uri()),
            "launcher": TorchrunLauncher(nproc_per_node=nproc_per_node),
        },
    )


defs = build_definitions()
