"""Dagster materializations through Pipes and 2-rank torchrun, MLflow lineage, and bad input.

One module-scoped run materializes the data assets and two chained training stages
(vit_warmup -> joint_pretrain) with small overrides; the other tests read what it left.
"""

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
from helpers import DATA_ROOT
from mlflow import MlflowClient

from definitions import build_definitions
from infra import lineage, storage
from training import checkpoint

pytestmark = pytest.mark.integration

# The launchpad's typed fields, as a user sets them (one section per block of the stage's spec).
SMALL_DATA = {
    "text_corpus": {"max_docs_per_source": 30},
    "image_text_corpus": {"max_digits": 60, "include_skimage": False},
    "video_corpus": {"max_chunks_per_video": 2},
    "tokenizer": {"vocab_size": 600},
}
SHORT_TRAIN = {"train": {"steps": 6, "log_every": 2}, "checkpoint": {"every": 3}}
# Stages trained in phases take per-phase step counts: ViT warm-up is "caption" (6 steps here)
# then "projector" only (2 steps); mid-training is three context lengths.
SHORT_VIT = {"phase_steps": [6, 2], "train": {"log_every": 2}, "checkpoint": {"every": 3}}
SHORT_MIDTRAIN = {"phase_steps": [2, 1, 1]}
DATA_ASSETS = ["text_corpus", "image_text_corpus", "video_corpus", "tokenizer", "mixture"]


def run(defs, instance, assets, ops_config, resources=None):
    job = defs.resolve_implicit_global_asset_job_def()
    run_config = {"ops": {k: {"config": v} for k, v in ops_config.items()}, **({"resources": resources} if resources else {})}
    return job.execute_in_process(run_config=run_config, instance=instance,
                                  asset_selection=[dg.AssetKey.from_user_string(a) for a in assets], raise_on_error=False)


def failure_messages(result) -> str:
    """Every error message in the run's events, with their causes (resource init included)."""
    parts = []
    for event in result.all_events:
        data = event.event_specific_data
        for attr in ("error", "user_failure_data"):
            value = getattr(data, attr, None) if data is not None else None
            while value is not None:
                parts.append(str(getattr(value, "description", None) or getattr(value, "message", value)))
                value = getattr(value, "cause", None)
    return "\n".join(parts)


def latest_metadata(instance, key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey.from_user_string(key))
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    saved = dict(os.environ)
    os.environ["K25_DATA_ROOT"] = str(DATA_ROOT)
    root = tmp_path_factory.mktemp("pipeline")
    tracking = f"sqlite:///{root}/mlflow.db"
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        defs = build_definitions(artifact_root=str(root / "art"), tracking_uri=tracking)
        result = run(defs, instance, DATA_ASSETS + ["vit_warmup", "joint_pretrain"],
                     {**SMALL_DATA, "vit_warmup": SHORT_VIT, "joint_pretrain": SHORT_TRAIN})
        yield {"root": root, "tracking": tracking, "instance": instance, "defs": defs, "result": result}
    os.environ.clear()
    os.environ.update(saved)


def test_chained_training_stages_materialize(env):
    result = env["result"]
    assert result.success, failure_messages(result)
    instance = env["instance"]
    vit, joint = latest_metadata(instance, "vit_warmup"), latest_metadata(instance, "joint_pretrain")
    # joint pre-training started from the warm-up's checkpoint, reported through Pipes by rank 0 only
    assert joint["init_from"] == vit["checkpoint_uri"]
    for md, steps in ((vit, 2), (joint, 6)):  # the warm-up reports its last phase's checkpoint
        manifest, digest = checkpoint.read_manifest(md["checkpoint_uri"])
        assert md["checkpoint_digest"] == digest
        assert manifest["world_size"] == 2 and manifest["step"] == steps
    assert vit["checkpoint_uri"].split("/")[-2] == "phase-1-projector"
    assert joint["loss_last"] < joint["loss_first"]
    event = instance.get_latest_materialization_event(dg.AssetKey("joint_pretrain"))
    assert event.asset_materialization.tags["dagster/data_version"] == joint["checkpoint_digest"]
    # the loss curve is shown in Dagster (markdown image) and stored in MLflow
    curve = event.asset_materialization.metadata["loss_curve"]
    assert isinstance(curve, dg.MarkdownMetadataValue) and curve.value.startswith("![joint_pretrain curves](data:image/png")
    client = MlflowClient(env["tracking"])
    assert [a.path for a in client.list_artifacts(joint["mlflow_run_id"], "plots")] == ["plots/joint_pretrain_curves.png"]
    losses = client.get_metric_history(joint["mlflow_run_id"], "loss")
    assert [m.step for m in losses] == [2, 3, 4, 6]  # every log_every=2 steps and at each checkpoint (3, 6)
    # the checkpoint's LoggedModel page: its metrics, on the mixture it was trained on, the spec as
    # params, the checkpoint URI and digest
    model = client.get_logged_model(joint["mlflow_model_id"])
    model_metrics = {m.key: m for m in model.metrics}
    assert model_metrics["loss"].step == 6 and model_metrics["loss"].value == losses[-1].value
    assert model_metrics["loss"].dataset_name == "mixture"
    assert model_metrics["loss"].dataset_digest == latest_metadata(instance, "mixture")["digest"][:32]
    assert model.params["train.steps"] == "6" and model.tags["checkpoint_uri"] == joint["checkpoint_uri"]
    assert model.tags["digest"] == joint["checkpoint_digest"]
    # MLflow system metrics of the training run are real samples, not zeros
    system = client.get_run(joint["mlflow_run_id"]).data.metrics
    assert system.get("system/system_memory_usage_megabytes", 0) > 0, sorted(system)
    # each run folder holds the resolved spec.json; its values are the MLflow run's params
    from infra.spec import read_spec
    from training.spec import StageSpec

    for md, stage in ((vit, "vit_warmup"), (joint, "joint_pretrain")):
        assert md["spec_uri"] == storage.join(md["run_dir"], "spec.json")
        spec = read_spec(StageSpec, md["spec_uri"])
        assert spec.stage == stage and spec.inputs.run_dir == md["run_dir"]
        params = client.get_run(md["mlflow_run_id"]).data.params
        assert params["optimizer.lr"] == str(spec.optimizer.lr) and params["profile"] == "tiny"
        assert params["inputs.mixture.digest"] == latest_metadata(instance, "mixture")["digest"]
    assert read_spec(StageSpec, joint["spec_uri"]).train.steps == 6  # the launchpad's typed override
    assert [p.steps for p in read_spec(StageSpec, vit["spec_uri"]).phases] == [6, 2]
    # the warm-up's two phases are one curve in its MLflow run: steps continue across them
    vit_losses = client.get_metric_history(vit["mlflow_run_id"], "loss")
    assert [m.step for m in vit_losses] == [2, 3, 4, 6, 8]
    assert vit_losses[-1].value < vit_losses[0].value


def test_blocking_checks_ran_and_passed(env):
    evaluations = env["result"].get_asset_check_evaluations()
    names = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in evaluations}
    assert names[("joint_pretrain", "checkpoint_manifest_present")] is True
    assert names[("vit_warmup", "loss_is_finite")] is True
    assert names[("mixture", "sources_present")] is True
    assert all(names.values()), names


def test_mlflow_lineage_walks_back_to_data_digests(env, capsys):
    client = MlflowClient(env["tracking"])
    node = lineage.resolve(client, "k25", "joint_pretrain")
    mixture_md = latest_metadata(env["instance"], "mixture")
    digests = lineage.data_digests(node)
    assert digests["mixture"] == mixture_md["digest"]
    assert digests["text"] == latest_metadata(env["instance"], "text_corpus")["digest"]
    upstream_models = [p for p in node.parents if p.kind == "model"]
    assert [m.stage for m in upstream_models] == ["vit_warmup"]
    assert upstream_models[0].details["checkpoint_uri"] == latest_metadata(env["instance"], "vit_warmup")["checkpoint_uri"]
    # the CLI prints the same chain
    assert lineage.main(["--tracking-uri", env["tracking"], "joint_pretrain"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("joint_pretrain: run ") and any(l.startswith("vit_warmup: run ") for l in lines)
    assert "  config: profile=tiny, train.steps=6" in out  # the launchpad's override, per stage
    assert out.count(mixture_md["digest"][:16]) == 1  # the chain once, each data set once ...
    mixture_row = next(l for l in lines if l.strip().startswith("mixture ") and mixture_md["digest"][:16] in l)
    assert "read by joint_pretrain, vit_warmup" in mixture_row  # ... with every stage that read it
    # any asset name: a data asset too
    assert lineage.main(["--tracking-uri", env["tracking"], "tokenizer"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tokenizer: run ") and latest_metadata(env["instance"], "tokenizer")["digest"] in out


def test_recurating_unchanged_sources_leaves_every_downstream_asset_fresh(env):
    """Digests hash content, not where it lies: a second curation run writes new folders with the
    same bytes, so Dagster's staleness resolver (what the UI shows) sees nothing to redo."""
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    before = {k: latest_metadata(env["instance"], k) for k in DATA_ASSETS}
    result = run(env["defs"], env["instance"], DATA_ASSETS, SMALL_DATA)
    assert result.success, failure_messages(result)
    after = {k: latest_metadata(env["instance"], k) for k in DATA_ASSETS}
    assert after["mixture"]["mixture_uri"] != before["mixture"]["mixture_uri"]  # a fresh folder ...
    assert after["mixture"]["digest"] == before["mixture"]["digest"]  # ... with the same content
    resolver = get_stale_status_resolver(env["instance"], list(env["defs"].assets))
    for key in ("tokenizer", "mixture", "vit_warmup", "joint_pretrain"):
        status = resolver.get_status(dg.AssetKey(key))
        assert status == StaleStatus.FRESH, (key, status, resolver.get_stale_causes(dg.AssetKey(key)))


def test_single_stage_rematerializes_from_upstream(env):
    before = latest_metadata(env["instance"], "joint_pretrain")
    result = run(env["defs"], env["instance"], ["joint_pretrain"], {"joint_pretrain": SHORT_TRAIN})
    assert result.success, failure_messages(result)
    after = latest_metadata(env["instance"], "joint_pretrain")
    assert after["init_from"] == before["init_from"]
    assert after["run_dir"] != before["run_dir"]  # a new run never overwrites an older checkpoint
    assert storage.exists(storage.join(before["checkpoint_uri"], "manifest.json"))


# ---- bad input fails before any training process starts

def _no_new_checkpoints(env, stage: str, before: int) -> bool:
    return len(storage.list_files(str(env["root"] / "art" / "checkpoints" / stage))) == before


def _count(env, stage: str) -> int:
    return len(storage.list_files(str(env["root"] / "art" / "checkpoints" / stage)))


@pytest.mark.parametrize("config, resources, message", [
    ({}, {"profile": {"config": {"name": "huge"}}}, "unknown profile 'huge'"),
    ({"train": {"steps": -3}}, None, "train.steps: Input should be greater than 0"),
    ({"data": {"vision_ratio": 1.5}}, None, "data.vision_ratio: Input should be less than 1"),
    ({"optimizer": {"name": "sgd"}}, None, "optimizer.name: Input should be 'adamw' or 'muonclip'"),
])
def test_invalid_config_fails_before_launch(env, config, resources, message):
    before = _count(env, "joint_pretrain")
    result = run(env["defs"], env["instance"], ["joint_pretrain"], {"joint_pretrain": config}, resources)
    assert not result.success
    assert message in failure_messages(result)
    assert _no_new_checkpoints(env, "joint_pretrain", before)
    if resources is None:  # the step ran (a bad profile fails resource setup, before any step)
        # a failed Dagster run leaves its MLflow runs FAILED, the stage's and the parent
        from infra.tracking import Tracker

        tracker = Tracker(env["tracking"])
        parent = tracker.find_parent(result.run_id)
        assert parent is not None and tracker.client.get_run(parent).info.status == "FAILED"


@pytest.mark.parametrize("config, message", [
    ({"optimizer": {"lr": "fast"}}, 'Value "fast"'),  # typed fields: Dagster's config check refuses it
    ({"train": {"stepz": 3}}, "stepz"),
])
def test_ill_typed_or_unknown_launchpad_field_is_refused_before_the_run(env, config, message):
    before = _count(env, "joint_pretrain")
    with pytest.raises(dg.DagsterInvalidConfigError, match=message):
        run(env["defs"], env["instance"], ["joint_pretrain"], {"joint_pretrain": config})
    assert _no_new_checkpoints(env, "joint_pretrain", before)


def test_a_checkpoint_is_not_continued_under_another_profile(env):
    """The profile is one value per run: a tiny checkpoint does not silently get small settings."""
    before = _count(env, "joint_pretrain")
    result = run(env["defs"], env["instance"], ["joint_pretrain"], {}, {"profile": {"config": {"name": "small"}}})
    assert not result.success
    assert "was trained with profile 'tiny', this run's profile is 'small'" in failure_messages(result)
    assert _no_new_checkpoints(env, "joint_pretrain", before)


def test_missing_upstream_checkpoint_fails(env, tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as fresh:
        result = run(env["defs"], fresh, ["midtrain"], {})
    assert not result.success
    assert "missing upstream" in failure_messages(result)


def test_deleted_upstream_checkpoint_fails(env, tmp_path):
    """Its own copy of the upstream checkpoint, recorded in its own instance: the shared
    fixture's checkpoint is never touched, so no other test depends on this one's order."""
    md = latest_metadata(env["instance"], "joint_pretrain")
    copy = tmp_path / "joint" / "step_000006"
    shutil.copytree(md["checkpoint_uri"], copy)
    (copy / "manifest.json").unlink()
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as fresh:
        for key in ("mixture", "joint_pretrain"):
            metadata = latest_metadata(env["instance"], key)
            if key == "joint_pretrain":
                metadata["checkpoint_uri"] = str(copy)
            fresh.report_runless_asset_event(dg.AssetMaterialization(key, metadata=metadata))
        before = _count(env, "midtrain")
        result = run(env["defs"], fresh, ["midtrain"], {"midtrain": SHORT_MIDTRAIN})
    assert not result.success
    assert f"missing upstream checkpoint of 'joint_pretrain': no checkpoint at {copy}" in failure_messages(result)
    assert _count(env, "midtrain") == before


def test_unreachable_tracking_server_fails_at_start(env):
    defs = build_definitions(artifact_root=str(env["root"] / "art"), tracking_uri="http://127.0.0.1:9")
    before = _count(env, "joint_pretrain")
    result = run(defs, env["instance"], ["joint_pretrain"], {"joint_pretrain": SHORT_TRAIN})
    assert not result.success
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in failure_messages(result)
    assert _no_new_checkpoints(env, "joint_pretrain", before)


# ---- the stage programs on their own (no Dagster): bad input exits with a message, no training

def _program(env, *args):
    import subprocess
    import sys

    mix = latest_metadata(env["instance"], "mixture")["mixture_uri"]
    cmd = [sys.executable, "-m", "training.pretrain", "--mixture", mix, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("args, message", [
    (["--stage", "joint_pretrain", "--profile", "bogus"], "unknown profile 'bogus'"),
    (["--stage", "joint_pretrain", "--init-from", "/nonexistent/step_000001"], "no checkpoint at /nonexistent/step_000001"),
    (["--stage", "vit_warmup", "--resume", "must"], "--resume must: no committed checkpoint"),
])
def test_program_rejects_bad_input(env, tmp_path, args, message):
    proc = _program(env, "--run-dir", str(tmp_path / "run"), *args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# ---- evaluation: any stage's checkpoint, comparison with the previous one, sensor and schedule

EVAL_SUITES = ("gsm8k", "mmlu", "humaneval", "digits_caption_retrieval")
EVAL = {"suites": list(EVAL_SUITES), "limit": 4, "max_new_tokens": 12}
JOINT_EVAL = "evaluation/joint_pretrain"


def run_eval(env, config):
    return run(env["defs"], env["instance"], [JOINT_EVAL], {"evaluation__joint_pretrain": config})


def test_evaluation_of_a_stage_is_reported_compared_with_its_own_previous_one_and_traced(env):
    instance = env["instance"]
    joint = latest_metadata(instance, "joint_pretrain")
    for attempt in range(2):  # the second report compares itself with the first
        result = run_eval(env, EVAL)
        assert result.success, failure_messages(result)
    md = latest_metadata(instance, JOINT_EVAL)
    assert md["evaluated_stage"] == "joint_pretrain" and md["evaluated_checkpoint"] == joint["checkpoint_uri"]
    assert md["evaluated_digest"] == joint["checkpoint_digest"]
    assert storage.exists(md["spec_uri"]) and md["spec_uri"].startswith(md["report_uri"])
    for suite in EVAL_SUITES:
        assert md[f"{suite}/n"] == 4 and 0.0 <= md[f"{suite}/accuracy"] <= 1.0
    assert "| humaneval | benchmark | 4 |" in md["report_md"]
    # a pre-trained checkpoint is scored as a base model: MMLU by log-likelihood, few-shot generation
    assert md["mode"] == 1.0 and "Mode: **base**" in md["report_md"]
    assert md["accuracy_chart"].startswith("![accuracy of joint_pretrain](data:image/png;base64,")
    # like with like: both checkpoints are named, both of this stage
    comparison = md["comparison"]
    assert "previous evaluation of joint_pretrain" in comparison
    assert comparison.count(joint["checkpoint_uri"]) == 2, comparison
    assert "n/a" not in comparison.split("| gsm8k/accuracy |")[1].split("\n")[0]
    import pandas as pd

    records = pd.read_parquet(md["records_uri"])
    assert sorted(records.suite.unique()) == sorted(EVAL_SUITES) and len(records) == 16
    assert {"prompt", "output", "extracted", "score", "output_tokens"} <= set(records.columns)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"report_written": True, "every_suite_scored": True}
    # lineage: the evaluation run takes the joint_pretrain LoggedModel as its input, and its
    # metrics are logged against that model (its MLflow page lists the evaluation)
    client = MlflowClient(env["tracking"])
    node = lineage.resolve(client, "k25", "evaluation")
    assert [p.stage for p in node.parents if p.kind == "model"] == ["joint_pretrain"]
    model = client.get_logged_model(joint["mlflow_model_id"])
    eval_metrics = {m.key for m in model.metrics or [] if m.run_id == md["mlflow_run_id"]}
    assert "gsm8k_accuracy" in eval_metrics, [m.key for m in model.metrics or []]


def test_a_checkpoint_of_another_stage_is_refused_by_this_stages_evaluation(env):
    vit = latest_metadata(env["instance"], "vit_warmup")
    result = run_eval(env, {**EVAL, "checkpoint_uri": vit["checkpoint_uri"]})
    assert not result.success
    assert "is a 'vit_warmup' checkpoint; this asset evaluates 'joint_pretrain'" in failure_messages(result)


def test_sensor_and_schedule_request_each_checkpoint_once(env):
    """Stateless: what is due is read from Dagster, so a restarted sensor (no cursor) asks for
    nothing already evaluated; the run key dedupes requests still in flight."""
    from defs.evaluation.automation import due_requests, new_checkpoint_evaluation

    instance = env["instance"]
    joint = latest_metadata(instance, "joint_pretrain")
    # evaluated above: nothing due, also for a fresh sensor context
    assert due_requests(instance, ("joint_pretrain",)) == []
    context = dg.build_sensor_context(instance=instance)
    assert isinstance(new_checkpoint_evaluation(context), dg.SkipReason)  # default stages: none materialized
    schedule = env["defs"].resolve_schedule_def("nightly_evaluation")
    assert schedule.cron_schedule == "0 3 * * *"
    assert not schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests
    # a new checkpoint is due once, pinned exactly, with the run's one profile
    result = run(env["defs"], instance, ["joint_pretrain"], {"joint_pretrain": SHORT_TRAIN})
    assert result.success, failure_messages(result)
    new = latest_metadata(instance, "joint_pretrain")
    assert new["checkpoint_digest"] != joint["checkpoint_digest"]
    [request] = due_requests(instance, ("joint_pretrain",))
    assert request.run_key == f"joint_pretrain:{new['checkpoint_digest']}"
    assert request.asset_selection == [dg.AssetKey(["evaluation", "joint_pretrain"])]
    pinned = request.run_config["ops"]["evaluation__joint_pretrain"]["config"]
    assert pinned["checkpoint_uri"] == new["checkpoint_uri"]
    assert request.run_config["resources"]["profile"]["config"]["name"] == "tiny"
    [nightly] = schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests
    assert nightly.run_key == request.run_key


def test_missing_evaluation_data_fails_before_launch(env, tmp_path):
    os.environ["K25_DATA_ROOT"] = str(tmp_path / "nowhere")
    try:
        result = run_eval(env, EVAL)
    finally:
        os.environ["K25_DATA_ROOT"] = str(DATA_ROOT)
    assert not result.success
    assert str(tmp_path / "nowhere") in failure_messages(result)
