"""Walk the MLflow lineage from an evaluation (or any run or model) back to the data digests.

    python -m infra.lineage                      # from the latest evaluation run
    python -m infra.lineage parl                 # from the latest run of a stage / asset
    python -m infra.lineage m-0123abcd...        # from a LoggedModel (checkpoint)
    python -m infra.lineage --tracking-uri postgresql://... <run id>

Each training run records its input datasets (with digests) and the LoggedModel of the
checkpoint it started from; each LoggedModel records its source run. Following model inputs
backwards therefore reaches the first stage and the curated data it read.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from mlflow import MlflowClient

from infra.settings import default_tracking_uri
from infra.tracking import FULL_DIGEST_TAG, STAGE_TAG


@dataclass
class LineageNode:
    kind: str  # "run" or "model"
    id: str
    stage: str
    details: dict[str, str] = field(default_factory=dict)
    datasets: list[dict[str, str]] = field(default_factory=list)
    parents: list["LineageNode"] = field(default_factory=list)


def latest_stage_run(client: MlflowClient, experiment: str, stage: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment named {experiment!r}")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{STAGE_TAG}` = '{stage}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise LookupError(f"no MLflow run for stage {stage!r} in experiment {experiment!r}")
    return runs[0].info.run_id


def walk_run(client: MlflowClient, run_id: str, seen: set[str] | None = None) -> LineageNode:
    seen = set() if seen is None else seen
    run = client.get_run(run_id)
    node = LineageNode("run", run_id, run.data.tags.get(STAGE_TAG, "?"),
                       {"dagster.run_id": run.data.tags.get("dagster.run_id", ""), "status": run.info.status})
    for ds in run.inputs.dataset_inputs or []:
        tags = {t.key: t.value for t in ds.tags}
        node.datasets.append({"name": ds.dataset.name, "digest": tags.get(FULL_DIGEST_TAG, ds.dataset.digest),
                              "source": ds.dataset.source, "context": tags.get("mlflow.data.context", "")})
    for model_input in run.inputs.model_inputs or []:
        if model_input.model_id not in seen:
            seen.add(model_input.model_id)
            node.parents.append(walk_model(client, model_input.model_id, seen))
    return node


def walk_model(client: MlflowClient, model_id: str, seen: set[str] | None = None) -> LineageNode:
    seen = set() if seen is None else seen
    model = client.get_logged_model(model_id)
    node = LineageNode("model", model_id, model.tags.get(STAGE_TAG, model.name),
                       {"checkpoint_uri": model.tags.get("checkpoint_uri", ""), "digest": model.tags.get("digest", ""),
                        "step": model.tags.get("step", "")})
    if model.source_run_id:
        node.parents.append(walk_run(client, model.source_run_id, seen))
    return node


def resolve(client: MlflowClient, experiment: str, target: str) -> LineageNode:
    if target.startswith("m-"):
        return walk_model(client, target)
    try:
        client.get_run(target)
        return walk_run(client, target)
    except Exception:  # noqa: BLE001 - not a run id: treat as a stage / asset name
        return walk_run(client, latest_stage_run(client, experiment, target))


def data_digests(node: LineageNode) -> dict[str, str]:
    """Every dataset digest reachable from a node (name -> digest)."""
    out = {d["name"]: d["digest"] for d in node.datasets}
    for parent in node.parents:
        out.update(data_digests(parent))
    return out


def format_chain(node: LineageNode, depth: int = 0) -> list[str]:
    pad = "  " * depth
    if node.kind == "model":
        lines = [f"{pad}model {node.id} [{node.stage}] step {node.details['step']} "
                 f"checkpoint {node.details['checkpoint_uri']} digest {node.details['digest'][:16]}"]
    else:
        lines = [f"{pad}run {node.id} [{node.stage}] dagster run {node.details['dagster.run_id'] or '-'}"]
    for d in node.datasets:
        lines.append(f"{pad}  data {d['name']} digest {d['digest'][:16]} ({d['context']}) {d['source']}")
    for parent in node.parents:
        lines += format_chain(parent, depth + 1)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", nargs="?", default="evaluation", help="run id, LoggedModel id (m-...) or stage name")
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or the embedded sqlite store")
    p.add_argument("--experiment", default="k25")
    a = p.parse_args(argv)
    a.tracking_uri = a.tracking_uri or default_tracking_uri()  # the pipeline's own default
    try:
        node = resolve(MlflowClient(a.tracking_uri), a.experiment, a.target)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(format_chain(node)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
