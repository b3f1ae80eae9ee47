"""The Dagster UI in a real browser (Debian's Chromium through Playwright), as a user meets it:
`dg dev` and an MLflow server on 127.0.0.1. It opens the asset graph, launches a stage from the
launchpad with a typed override, follows the MLflow link, stops a second run mid-training with
Terminate, and checks what the stop left: a committed checkpoint, KILLED MLflow runs, and a
`--resume must` that finishes the stage. Screenshots go to $K25_UI_SCREENSHOTS (default: the
test's temporary folder)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import helpers
import pytest
from mlflow import MlflowClient

from infra import storage
from training import checkpoint

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
DATA = {"text_corpus": {"max_docs_per_source": 20}, "image_text_corpus": {"max_digits": 20, "include_skimage": False},
        "video_corpus": {"max_chunks_per_video": 1}, "tokenizer": {"vocab_size": helpers.TINY_VOCAB}}
STOPPED_STEPS = 150  # long enough to stop it in the middle


def wait_for(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3):
                return
        except OSError:
            assert proc.poll() is None, f"{what} exited early"
            time.sleep(0.5)
    raise AssertionError(f"{what} did not answer at {url} within {timeout_s} s")


RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
RUN_LOGS = """query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
  ... on MessageEvent { message } } } } }"""


def run_status(port: int, run_id: str) -> str:
    return helpers.graphql(port, RUN_STATUS, {"id": run_id})["runOrError"].get("status", "")


def wait_status(port: int, run_id: str, wanted: set[str], timeout_s: float) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = run_status(port, run_id)
        if status in wanted:
            return status
        time.sleep(1)
    raise AssertionError(f"run {run_id} is {run_status(port, run_id)}, not {wanted}, after {timeout_s} s")


def run_messages(port: int, run_id: str) -> list[str]:
    events = helpers.graphql(port, RUN_LOGS, {"id": run_id})["logsForRun"].get("events", [])
    return [e.get("message") or "" for e in events]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The data assets materialized, then `dg dev` and an MLflow server, both on loopback."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    root = tmp_path_factory.mktemp("ui")
    (root / "dagster_home").mkdir()
    shutil.copy(helpers.REPO_ROOT / "infra" / "deploy" / "dagster.yaml", root / "dagster_home" / "dagster.yaml")
    ml_port, ui_port = helpers.free_port(), helpers.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "K25_ARTIFACT", "MLFLOW_TRACKING"))}
    env.update(DAGSTER_HOME=str(root / "dagster_home"), K25_HOME=str(root / "k25"), K25_DATA_ROOT=str(helpers.DATA_ROOT),
               MLFLOW_TRACKING_URI=f"http://127.0.0.1:{ml_port}")
    bin_dir = Path(sys.executable).parent
    procs = [subprocess.Popen([str(bin_dir / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                               "--artifacts-destination", str(root / "mlartifacts"), "--host", "127.0.0.1",
                               "--port", str(ml_port), "--workers", "1"],
                              env=env, stdout=open(root / "mlflow.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)]
    try:
        wait_for(f"http://127.0.0.1:{ml_port}/health", procs[0], "the MLflow server")
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            from definitions import build_definitions

            defs = build_definitions()
            with dg.DagsterInstance.get() as instance:
                result = dg.materialize(list(defs.assets), instance=instance, resources=defs.resources,
                                        run_config={"ops": {k: {"config": v} for k, v in DATA.items()}},
                                        selection=[*DATA, "mixture"])
                assert result.success
        finally:
            os.environ.clear()
            os.environ.update(saved)
        procs.append(subprocess.Popen([str(bin_dir / "dg"), "dev", "--host", "127.0.0.1", "--port", str(ui_port)],
                                      cwd=helpers.REPO_ROOT, env=env, stdout=open(root / "dg.log", "w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
        wait_for(f"http://127.0.0.1:{ui_port}/server_info", procs[1], "dg dev")
        deadline = time.time() + 180  # the code location loads after the webserver answers
        while not _asset_nodes(ui_port) and time.time() < deadline:
            time.sleep(2)
        yield {"root": root, "env": env, "ui": ui_port, "mlflow": f"http://127.0.0.1:{ml_port}"}
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _asset_nodes(port: int) -> list:
    try:
        return helpers.graphql(port, "{ assetNodes { assetKey { path } } }")["assetNodes"]
    except (OSError, KeyError, TypeError):
        return []


@pytest.fixture(scope="module")
def browser(servers):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # never a downloaded browser
        page = b.new_page(viewport={"width": 1400, "height": 900})
        yield page
        b.close()


def shots(servers) -> Path:
    folder = Path(os.environ.get("K25_UI_SCREENSHOTS") or servers["root"] / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_load_state("networkidle")
    if not getattr(page, "_k25_dialog_seen", False):  # the first visit's newsletter dialog, once
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            page.get_by_role("button", name="Skip").click(timeout=10000)
        except PlaywrightTimeout:
            pass
        page._k25_dialog_seen = True


def launch_from_launchpad(page, servers, asset: str, ops_yaml: str, shot: str) -> str:
    """Open the asset's launchpad, write the ops section (typed fields), press Materialize;
    returns the new run's id."""
    open_page(page, f"http://127.0.0.1:{servers['ui']}/assets/{asset}")
    buttons = page.locator("button")
    labels = [buttons.nth(i).inner_text() for i in range(buttons.count())]
    buttons.nth(labels.index("Materialize") + 1).click()  # the caret beside Materialize
    page.get_by_role("menuitem", name="Open launchpad").click()
    page.wait_for_selector(".CodeMirror")
    page.wait_for_timeout(1500)
    config = page.evaluate("() => document.querySelector('.CodeMirror').CodeMirror.getValue()")
    assert "env: MLFLOW_TRACKING_URI" in config  # the resource shows the variable, not its value
    page.evaluate("(text) => document.querySelector('.CodeMirror').CodeMirror.setValue(text)",
                  config.replace("ops: {}", ops_yaml, 1))
    page.wait_for_timeout(1500)  # the launchpad validates the config against the typed schema
    page.screenshot(path=str(shots(servers) / shot))
    page.locator("button").filter(has_text="Materialize").last.click()
    page.wait_for_url("**/runs/**", timeout=30000)
    return page.url.rstrip("/").split("/runs/")[1].split("?")[0].split("/")[0]


def latest_metadata(servers, key: str) -> dict:
    saved = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = servers["env"]["DAGSTER_HOME"]
    try:
        with dg.DagsterInstance.get() as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey(key))
            return dict(event.asset_materialization.metadata) if event else {}
    finally:
        if saved is None:
            os.environ.pop("DAGSTER_HOME")
        else:
            os.environ["DAGSTER_HOME"] = saved


def test_the_asset_graph_renders(servers, browser):
    open_page(browser, f"http://127.0.0.1:{servers['ui']}/asset-groups")
    try:
        for group in ("data", "pretrain", "posttrain", "eval"):  # the graph's groups, drawn
            browser.wait_for_selector(f"text={group}", timeout=60000)
        browser.wait_for_timeout(2000)
    finally:
        browser.screenshot(path=str(shots(servers) / "1-asset-graph.png"))
    keys = {"/".join(n["assetKey"]["path"]) for n in _asset_nodes(servers["ui"])}
    assert {"vit_warmup", "joint_pretrain", "evaluation/parl", "mixture"} <= keys


def test_a_stage_launched_from_the_launchpad_links_to_mlflow(servers, browser):
    ops = "ops:\n  vit_warmup:\n    config:\n      phase_steps: [2, 1]\n      checkpoint:\n        every: 2"
    run_id = launch_from_launchpad(browser, servers, "vit_warmup", ops, "2-launchpad-typed-override.png")
    assert wait_status(servers["ui"], run_id, {"SUCCESS", "FAILURE"}, 300) == "SUCCESS"
    md = latest_metadata(servers, "vit_warmup")
    spec = json.loads(storage.read_text(md["spec_uri"].value))
    assert [p["steps"] for p in spec["phases"]] == [2, 1]  # the typed override took effect
    # the MLflow link is a link on the asset page; following it opens the run in the MLflow UI
    link = md["mlflow_run"]
    assert isinstance(link, dg.UrlMetadataValue) and link.url.startswith(servers["mlflow"])
    open_page(browser, f"http://127.0.0.1:{servers['ui']}/assets/vit_warmup")
    browser.screenshot(path=str(shots(servers) / "3-asset-page-with-mlflow-link.png"), full_page=True)
    anchor = browser.locator(f"a[href='{link.url}']").first
    with browser.context.expect_page() as new_tab:
        anchor.click()
    mlflow_page = new_tab.value
    mlflow_page.wait_for_load_state("load")
    mlflow_page.wait_for_selector("text=vit_warmup", timeout=30000)
    mlflow_page.screenshot(path=str(shots(servers) / "4-mlflow-run-page.png"))
    assert md["mlflow_run_id"].value in mlflow_page.url
    mlflow_page.close()


def test_terminate_in_the_ui_commits_a_checkpoint_marks_mlflow_killed_and_resume_finishes(servers, browser):
    ops = (f"ops:\n  joint_pretrain:\n    config:\n      train:\n        steps: {STOPPED_STEPS}\n        log_every: 1\n"
           "      checkpoint:\n        every: 1000")
    run_id = launch_from_launchpad(browser, servers, "joint_pretrain", ops, "5-launchpad-long-run.png")
    deadline = time.time() + 240
    while not any(m.startswith("step 3/") for m in run_messages(servers["ui"], run_id)):
        assert time.time() < deadline, "training did not reach step 3"
        assert run_status(servers["ui"], run_id) in ("QUEUED", "STARTING", "STARTED", "NOT_STARTED")
        time.sleep(0.5)
    open_page(browser, f"http://127.0.0.1:{servers['ui']}/runs/{run_id}")
    browser.get_by_role("button", name="Terminate").first.click()
    browser.screenshot(path=str(shots(servers) / "6-terminate-dialog.png"))
    dialog = browser.locator(".bp5-dialog, [role=dialog]").last
    dialog.get_by_role("button", name="Terminate").click()
    assert wait_status(servers["ui"], run_id, {"CANCELED", "FAILURE", "SUCCESS"}, 240) == "CANCELED"
    browser.wait_for_timeout(2000)
    browser.screenshot(path=str(shots(servers) / "7-run-canceled.png"), full_page=True)
    messages = run_messages(servers["ui"], run_id)
    assert any(m.startswith("stopped by SIGINT: committed step") for m in messages), messages[-15:]

    # the stop committed a checkpoint before the last step, in the run's folder
    run_dir = Path(servers["env"]["K25_HOME"]) / "artifacts" / "checkpoints" / "joint_pretrain" / run_id
    latest = checkpoint.latest(str(run_dir))
    assert latest is not None
    stopped_at = checkpoint.read_manifest(latest)[0]["step"]
    assert 3 <= stopped_at < STOPPED_STEPS
    # MLflow: the stage's run and the Dagster run's parent ended KILLED, with an end time
    client = MlflowClient(servers["mlflow"])
    exp = client.get_experiment_by_name("k25")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`dagster.run_id` = '{run_id}'")
    by_stage = {r.data.tags.get("k25.stage"): r.info for r in runs}
    assert by_stage["joint_pretrain"].status == "KILLED" and by_stage["joint_pretrain"].end_time
    assert by_stage["dagster-run"].status == "KILLED" and by_stage["dagster-run"].end_time

    # `--resume must` continues from that checkpoint and finishes the stage
    env = helpers.stage_env({"MLFLOW_TRACKING_URI": servers["mlflow"], "K25_HOME": servers["env"]["K25_HOME"]})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "training.pretrain", "--spec", str(run_dir / "spec.json"), "--resume", "must"],
                          cwd=helpers.REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"from step {stopped_at}" in proc.stdout
    final = checkpoint.latest(str(run_dir))
    assert checkpoint.read_manifest(final)[0]["step"] == STOPPED_STEPS

    # "Re-execute all" in the UI works in the first attempt's folder: it finds the finished
    # checkpoint there (no step is trained twice) and materializes it
    open_page(browser, f"http://127.0.0.1:{servers['ui']}/runs/{run_id}")
    browser.get_by_role("button", name="Re-execute all").first.click()
    browser.wait_for_url(lambda url: "/runs/" in url and run_id not in url, timeout=30000)
    rerun_id = browser.url.rstrip("/").split("/runs/")[1].split("?")[0].split("/")[0]
    status = wait_status(servers["ui"], rerun_id, {"SUCCESS", "FAILURE", "CANCELED"}, 300)
    assert status == "SUCCESS", "\n".join(run_messages(servers["ui"], rerun_id)[-25:])
    assert any(f"from step {STOPPED_STEPS}" in m for m in run_messages(servers["ui"], rerun_id))
    md = latest_metadata(servers, "joint_pretrain")
    assert md["checkpoint_uri"].value == final and md["run_dir"].value == str(run_dir)
    browser.screenshot(path=str(shots(servers) / "8-reexecuted-run.png"))
