"""rft_data: the reward-1 vision trajectories of the latest RL run, for rejection-sampling
fine-tuning (RECIPE.md §6.3: the self-improving data loop)."""

import dagster as dg

from defs.common import check_specs, latest_materialization, upstream_ref, verified
from defs.resources import ArtifactStore, MlflowTracking
from infra.refs import CheckpointRef, RFTDataRef, plain_metadata
from infra.spec import read_spec
from infra.tracking import DatasetRef

CHECKS = ("rows_are_reward_one_image_tasks", "trajectories_match_their_text")


@dg.asset(group_name="posttrain", code_version="rft-v1", kinds={"python"}, deps=["rl"],
          check_specs=check_specs("rft_data", CHECKS))
def rft_data(context: dg.AssetExecutionContext, artifacts: ArtifactStore, mlflow: MlflowTracking) -> dg.MaterializeResult:
    """Rejection-sampling data: every reward-1 image-task trajectory the latest `rl` checkpoint was
    trained on, token for token (the engine's ids and loss mask), with its prompt, answer and
    images, as one Parquet file. Its manifest records the RL run and checkpoint it came from."""
    import math

    from agents.chat import render
    from training.data import load_vocab
    from training.rft import gather, read_rft
    from training.spec import StageSpec

    ckpt = upstream_ref(context, "rl", CheckpointRef)
    verified(ckpt, "rl checkpoint")
    md = plain_metadata(latest_materialization(context, "rl").metadata)
    spec = read_spec(StageSpec, md["spec_uri"])
    iterations = math.ceil(ckpt.step / spec.rl.updates_per_rollout)  # the rollout batches the checkpoint saw
    with mlflow.stage_run(context, "rft_data") as run:
        out = artifacts.uri("rft_data", context.run_id)
        manifest = gather(md["run_dir"], iterations, out, {"rl_run_dir": md["run_dir"], "checkpoint_uri": ckpt.uri,
                                                           "checkpoint_digest": ckpt.digest, "step": ckpt.step,
                                                           "rl_mlflow_run_id": md.get("mlflow_run_id")})
        ref = RFTDataRef(uri=out, digest=manifest["digest"])
        _, rows = read_rft(out)
        wrong = [r["task_id"] for r in rows if r["reward"] < 1.0 or not r["images"]]
        # the stored ids must be what the conversation renders to up to the sampled answer: the
        # prompt part is re-rendered and compared, the answer part is the engine's own tokens
        vocab = load_vocab(spec.inputs.mixture.verify())
        mismatched = [r["task_id"] for r in rows
                      if list(r["ids"][: len(render(r["messages"][:1], vocab, add_generation_prompt=True))])
                      != render(r["messages"][:1], vocab, add_generation_prompt=True)]
        run.tracker.log_metrics(run.run_id, {"rows": manifest["rows"]} | {f"rows_{k}": v for k, v in manifest["domains"].items()},
                                step=0)
        run.tracker.log_datasets(run.run_id, [DatasetRef("rft_data", ref.digest, out, context="training")])
        checks = run.record_checks([
            dg.AssetCheckResult(check_name="rows_are_reward_one_image_tasks", asset_key="rft_data", passed=not wrong,
                                metadata={"rows": len(rows), "wrong": str(wrong[:10])}),
            dg.AssetCheckResult(check_name="trajectories_match_their_text", asset_key="rft_data", passed=not mismatched,
                                metadata={"mismatched": str(mismatched[:10])}),
        ])
    return dg.MaterializeResult(
        metadata={**ref.to_metadata(), "rows": manifest["rows"], "domains": str(manifest["domains"]),
                  "iterations": iterations, "source_checkpoint": ckpt.uri, **run.links()},
        data_version=dg.DataVersion(ref.digest), check_results=checks)
