#!/usr/bin/env bash
# Create .venv and install the project with its test tools. Safe to re-run: it does nothing when
# pyproject.toml has not changed since the last successful install.
#   K25_TORCH_SPEC  the torch requirement (default torch==2.13.0: the CPU build on these machines;
#                   on a GPU machine pick the CUDA build you want, e.g. "torch==2.13.0")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.k25-installed
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv is up to date"; exit 0
fi
pip install -q --upgrade pip
# torch first: a torch range elsewhere would otherwise pull a multi-GB CUDA build.
pip install -q "${K25_TORCH_SPEC:-torch==2.13.0}"
# DeepSpeed has no wheel; build it against the installed torch, without its CUDA ops.
DS_BUILD_OPS=0 pip install -q --no-build-isolation "deepspeed>=0.17"
pip install -q -e '.[test]'
echo "$want" > "$stamp"
echo "setup: done ($(python -c 'import torch, dagster, mlflow; print("torch", torch.__version__, "dagster", dagster.__version__, "mlflow", mlflow.__version__)'))"
