# Source me: `source scripts/env.sh`. Activates .venv and points Dagster, MLflow and the artifact
# root at project-local state under .k25/ (the embedded default: sqlite and local files).
_k25_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
. "$_k25_root/.venv/bin/activate"
export K25_HOME="${K25_HOME:-$_k25_root/.k25}"
export DAGSTER_HOME="${DAGSTER_HOME:-$K25_HOME/dagster}"
export K25_DATA_ROOT="${K25_DATA_ROOT:-$(cd "$_k25_root/.." && pwd)/shared/data}"
# MLflow's usage telemetry would call an outside address; nothing here talks beyond loopback.
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp "$_k25_root/infra/deploy/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
cd "$_k25_root"
unset _k25_root
