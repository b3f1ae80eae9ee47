"""`dg dev` (as README says) serves the whole asset graph (queried over GraphQL on loopback)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
QUERY = '{ assetNodes { assetKey { path } dependencyKeys { path } } }'


def test_dg_dev_serves_the_asset_graph(tmp_path):
    port = helpers.free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "K25_HOME": str(tmp_path / "k25")}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # own process group: dagster dev's daemon and code server must die with it
    dg = str(Path(sys.executable).parent / "dg")
    proc = subprocess.Popen([dg, "dev", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        nodes, deadline = None, time.time() + 120
        while time.time() < deadline:
            try:
                nodes = helpers.graphql(port, QUERY)["assetNodes"]
                if nodes:
                    break
            except (OSError, KeyError, TypeError):
                pass
            assert proc.poll() is None, "dagster dev exited early"
            time.sleep(2)
        assert nodes, "the UI did not serve asset nodes within 120 s"
        deps = {"/".join(n["assetKey"]["path"]): sorted("/".join(d["path"]) for d in n["dependencyKeys"]) for n in nodes}
        assert deps["evaluation/parl"] == ["mixture", "parl"]
        assert deps["evaluation/sft"] == ["mixture", "sft"]
        assert deps["joint_pretrain"] == ["mixture", "vit_warmup"]
        assert deps["sft"] == ["midtrain", "mixture", "sft_tool_data"]
        assert deps["rft_data"] == ["rl"]
        assert deps["rl"] == ["grm", "mixture", "sft"]
        assert len(deps) == 19
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
