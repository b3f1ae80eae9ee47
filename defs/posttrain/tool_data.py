"""sft_tool_data: executed IPython traces for zero-vision SFT (RECIPE.md §5, POSTTRAIN.md §3)."""

import random

import dagster as dg

from defs.common import check_specs
from defs.resources import ArtifactStore, MlflowTracking
from infra.refs import ToolDataRef
from infra.settings import default_data_root
from infra.tracking import DatasetRef

CHECKS = ("traces_per_family", "reexecution_reproduces_outputs", "no_gold_answer_in_user_turns")


class ToolDataRunConfig(dg.Config):
    traces_per_family: int = 220
    """Kept traces wanted per image family (count, size, maze, pie, locate; diff is held out)."""
    pot_traces: int = 200
    """Kept program-of-thought GSM8K traces wanted."""
    search_traces: int = 120
    """Kept widesearch_local traces wanted (scripted serial plans and, for delegation_share of
    them, plans that delegate to scripted sub-agents with a random fan-out)."""
    delegation_share: float = 0.2
    """Share of the widesearch_local traces that delegate."""
    seed: int = 0
    """Which tasks are built (every task is a pure function of family, split, index and seed)."""
    reexecute_share: float = 0.05
    """Share of traces re-executed in fresh sessions by the reproducibility check."""
    min_traces_per_family: int = 200
    """The traces_per_family check fails below this."""


@dg.asset(group_name="posttrain", code_version="tool-data-v2", kinds={"python"},
          check_specs=check_specs("sft_tool_data", CHECKS))
def sft_tool_data(context: dg.AssetExecutionContext, config: ToolDataRunConfig, artifacts: ArtifactStore,
                  mlflow: MlflowTracking) -> dg.MaterializeResult:
    """Zero-vision SFT traces: image tasks built from real photos (count, size, maze, pie, locate),
    each solved by a teacher program variant that really runs in the sandboxed IPython kernel (its
    real output is the tool message; kept only when the answer equals the construction's ground
    truth), plus GSM8K program-of-thought traces checked against gold, plus widesearch_local
    search traces (scripted serial plans, a minority delegating to scripted sub-agents with a
    random fan-out; kept when the submitted table is exactly right). The image reaches the model
    only as text. Needs root (the kernel's sandbox)."""
    from agents.kernel import Kernel
    from agents.sandbox import SandboxUnavailable
    from agents.sft_data import ToolDataConfig, build_tool_data, gold_leaks, read_tool_data, reexecute
    from training.data import gsm8k_path, read_jsonl

    with mlflow.stage_run(context, "sft_tool_data") as run:
        gsm8k = read_jsonl(gsm8k_path(default_data_root(), "train"))
        out = artifacts.uri("sft_tool_data", context.run_id)
        try:
            kernel = Kernel()
        except SandboxUnavailable as e:
            raise dg.Failure(description=f"sft_tool_data executes every trace in the sandboxed kernel: {e}") from e
        with kernel:
            manifest = build_tool_data(out, gsm8k, ToolDataConfig(config.traces_per_family, config.pot_traces,
                                                                  config.seed, search_traces=config.search_traces,
                                                                  delegation_share=config.delegation_share),
                                       log=context.log.info)
            _, rows = read_tool_data(out)
            sample = random.Random(config.seed).sample(rows, max(1, round(config.reexecute_share * len(rows))))
            differ = [r["id"] for r in sample if reexecute(kernel, r) != r["outputs"]]
        leaks = [r["id"] for r in rows if gold_leaks(r)]
        ref = ToolDataRef(uri=out, digest=manifest["digest"])
        kept = manifest["kept"]
        fewest = min(kept.get(f, 0) for f in manifest["families"])
        run.tracker.log_params(run.run_id, {"traces_per_family": config.traces_per_family,
                                            "pot_traces": config.pot_traces, "seed": config.seed})
        run.tracker.log_metrics(run.run_id, {f"kept_{k}": v for k, v in kept.items()}
                                | {f"keep_rate_{k}": v for k, v in manifest["keep_rate"].items()}, step=0)
        run.tracker.log_datasets(run.run_id, [DatasetRef("sft_tool_data", ref.digest, out, context="training")])
        checks = run.record_checks([
            dg.AssetCheckResult(check_name="traces_per_family", asset_key="sft_tool_data",
                                passed=fewest >= config.min_traces_per_family,
                                metadata={"fewest": fewest, "kept": str(kept)}),
            dg.AssetCheckResult(check_name="reexecution_reproduces_outputs", asset_key="sft_tool_data",
                                passed=not differ, metadata={"re_executed": len(sample), "differ": str(differ[:10])}),
            dg.AssetCheckResult(check_name="no_gold_answer_in_user_turns", asset_key="sft_tool_data",
                                passed=not leaks, metadata={"leaks": str(leaks[:10])}),
        ])
    table = "\n".join(f"| {k} | {kept.get(k, 0)} | {manifest['tried'].get(k, 0)} | {manifest['keep_rate'].get(k, 0):.3f} |"
                      for k in sorted(manifest["tried"]))
    return dg.MaterializeResult(
        metadata={**ref.to_metadata(), "traces": len(rows), "re_executed": len(sample),
                  "families": dg.MetadataValue.md(f"| family | kept | tried | keep rate |\n|---|---|---|---|\n{table}\n"),
                  **run.links()},
        data_version=dg.DataVersion(ref.digest), check_results=checks)
