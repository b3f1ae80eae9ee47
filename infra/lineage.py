"""Walk the MLflow lineage from an evaluation (or any run or model) back to the data digests.

    python -m infra.lineage                      # from the latest evaluation run
    python -m infra.lineage parl                 # from the latest run of any asset (stage or data)
    python -m infra.lineage evaluation/sft       # from the latest evaluation of a stage
    python -m infra.lineage m-0123abcd...        # from a LoggedModel (checkpoint)
    python -m infra.lineage --tracking-uri postgresql://... <run id>

It prints the chain once, newest first (each stage: its run, status, key config and metrics, the
checkpoint it wrote), then one table of every data set reached, each digest once with the stages
that read it.

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


KEY_CONFIG = ("profile", "train.steps", "optimizer.name", "optimizer.lr", "data.seq_len", "data.batch_size",
              "data.vision_ratio", "nproc_per_node", "evaluation.suites", "evaluation.limit", "vocab_size")
KEY_METRICS = ("loss", "loss_text", "loss_vision", "vision_token_ratio", "tokens_per_s", "reward_mean", "num_samples",
               "rejected_fraction")


def key_config(params: dict[str, str]) -> dict[str, str]:
    return {k: params[k] for k in KEY_CONFIG if k in params}


def key_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in sorted(metrics.items()) if k in KEY_METRICS or k.endswith(("_accuracy", "_pass_at_1"))}


def latest_stage_run(client: MlflowClient, experiment: str, name: str) -> str:
    """The latest run of an asset: a stage or data asset by name, `evaluation/<stage>` for the
    evaluation of one stage, `evaluation` for the latest of any."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment named {experiment!r}")
    stage, _, evaluated = name.partition("/")
    where = f"tags.`{STAGE_TAG}` = '{stage}'" + (f" AND tags.`evaluated_stage` = '{evaluated}'" if evaluated else "")
    runs = client.search_runs([exp.experiment_id], filter_string=where, order_by=["attributes.start_time DESC"],
                              max_results=1)
    if not runs:
        raise LookupError(f"no MLflow run for asset {name!r} in experiment {experiment!r}")
    return runs[0].info.run_id


def walk_run(client: MlflowClient, run_id: str, seen: set[str] | None = None) -> LineageNode:
    seen = set() if seen is None else seen
    run = client.get_run(run_id)
    node = LineageNode("run", run_id, run.data.tags.get(STAGE_TAG, "?"),
                       {"dagster.run_id": run.data.tags.get("dagster.run_id", ""), "status": run.info.status,
                        "config": key_config(run.data.params), "metrics": key_metrics(run.data.metrics),
                        "tags": {k: v for k, v in run.data.tags.items() if k.startswith(("k25.", "evaluated_"))}})
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


def chain(node: LineageNode) -> list[LineageNode]:
    """The nodes from `node` backwards, each once, in walking order (newest first)."""
    out, todo = [], [node]
    while todo:
        current = todo.pop(0)
        out.append(current)
        todo = current.parents + todo
    return out


def _fmt(values: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()) or "-"


def format_chain(node: LineageNode) -> list[str]:
    lines, datasets = [], {}
    for n in chain(node):
        d = n.details
        if n.kind == "model":
            lines.append(f"  checkpoint of {n.stage}: model {n.id}, step {d['step']}, digest {d['digest'][:16]}, "
                         f"{d['checkpoint_uri']}")
            continue
        lines.append(f"{n.stage}: run {n.id} ({d['status']}), dagster run {d['dagster.run_id'] or '-'}")
        lines.append(f"  config: {_fmt(d.get('config', {}))}")
        lines.append(f"  metrics: {_fmt(d.get('metrics', {}))}")
        for key, value in sorted(d.get("tags", {}).items()):
            if key != STAGE_TAG:
                lines.append(f"  {key}: {value}")
        for ds in n.datasets:
            entry = datasets.setdefault((ds["name"], ds["digest"]), {"source": ds["source"], "read_by": []})
            if n.stage not in entry["read_by"]:
                entry["read_by"].append(n.stage)
    if datasets:
        lines.append("")
        lines.append(f"data sets ({len(datasets)}, each once):")
        width = max(len(name) for name, _ in datasets)
        for (name, digest), entry in sorted(datasets.items()):
            lines.append(f"  {name:<{width}}  {digest[:16]}  read by {', '.join(entry['read_by'])}  {entry['source']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", nargs="?", default="evaluation", help="run id, LoggedModel id (m-...), or an asset name (stage, data asset, evaluation/<stage>)")
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
