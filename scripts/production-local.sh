#!/usr/bin/env bash
# The production settings on one machine, to try them before a cluster: Dagster on PostgreSQL (the
# shipped infra/deploy/dagster.postgres.yaml), MLflow as a server on PostgreSQL with its artifacts
# on S3, and the pipeline's artifact root on S3 (a moto server on 127.0.0.1, or your S3).
#
#   scripts/production-local.sh up      # databases, bucket, S3 (moto) and the MLflow server
#   source .k25-prod/env && dg dev      # the Dagster UI on these settings; MLflow UI: $K25_MLFLOW_UI_URL
#   scripts/production-local.sh down    # stops what `up` started (data stays)
#
# PostgreSQL must be running already. Settings (environment; defaults in brackets):
#   K25_PROD_HOME [./.k25-prod]  DAGSTER_PG_HOST [127.0.0.1]  DAGSTER_PG_USER [postgres]
#   DAGSTER_PG_PASSWORD [empty]  DAGSTER_PG_DB [k25_dagster]  K25_MLFLOW_DB [k25_mlflow]
#   K25_MLFLOW_PORT [5000]  K25_S3_PORT [5001]  K25_BUCKET [k25]
#   AWS_ENDPOINT_URL_S3 [empty: start moto on K25_S3_PORT], AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
set -euo pipefail

PROD_HOME=$(mkdir -p "${K25_PROD_HOME:-$PWD/.k25-prod}" && cd "${K25_PROD_HOME:-$PWD/.k25-prod}" && pwd)
PG_HOST=${DAGSTER_PG_HOST:-127.0.0.1}
PG_USER=${DAGSTER_PG_USER:-postgres}
PG_PASSWORD=${DAGSTER_PG_PASSWORD:-}
DAGSTER_DB=${DAGSTER_PG_DB:-k25_dagster}
MLFLOW_DB=${K25_MLFLOW_DB:-k25_mlflow}
MLFLOW_PORT=${K25_MLFLOW_PORT:-5000}
S3_PORT=${K25_S3_PORT:-5001}
BUCKET=${K25_BUCKET:-k25}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}

wait_for() {  # wait_for URL WHAT LOG
  for _ in $(seq 1 120); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "error: $2 did not answer at $1 within 60 s; its log: $3" >&2
  tail -n 20 "$3" >&2 || true
  exit 1
}

create_db() {  # idempotent: an existing database is kept
  if ! PGPASSWORD=$PG_PASSWORD psql -h "$PG_HOST" -U "$PG_USER" -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$1'" | grep -q 1; then
    PGPASSWORD=$PG_PASSWORD psql -h "$PG_HOST" -U "$PG_USER" -d postgres -qc "CREATE DATABASE \"$1\""
    echo "created database $1"
  fi
}

up() {
  create_db "$DAGSTER_DB"
  create_db "$MLFLOW_DB"
  export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
  export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
  if [ -z "${AWS_ENDPOINT_URL_S3:-}" ]; then
    export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$S3_PORT
    "$PY" -m moto.server -H 127.0.0.1 -p "$S3_PORT" > "$PROD_HOME/moto.log" 2>&1 &
    echo $! > "$PROD_HOME/moto.pid"
    wait_for "$AWS_ENDPOINT_URL_S3" "moto S3" "$PROD_HOME/moto.log"
  fi
  "$PY" - "$BUCKET" <<'EOF'
import sys, boto3
s3 = boto3.client("s3")
if sys.argv[1] not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=sys.argv[1])
    print(f"created bucket {sys.argv[1]}")
EOF
  # The server reads the password from its own command line on this machine only; clients (Dagster,
  # the training programs) see http://127.0.0.1:PORT, which carries none.
  mlflow server --backend-store-uri "postgresql+psycopg2://$PG_USER:$PG_PASSWORD@$PG_HOST:5432/$MLFLOW_DB" \
    --artifacts-destination "s3://$BUCKET/mlflow" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    > "$PROD_HOME/mlflow.log" 2>&1 &
  echo $! > "$PROD_HOME/mlflow.pid"
  wait_for "http://127.0.0.1:$MLFLOW_PORT/health" "the MLflow server" "$PROD_HOME/mlflow.log"

  mkdir -p "$PROD_HOME/dagster_home"
  cp "$ROOT/infra/deploy/dagster.postgres.yaml" "$PROD_HOME/dagster_home/dagster.yaml"
  cat > "$PROD_HOME/env" <<EOF
export DAGSTER_HOME=$PROD_HOME/dagster_home
export DAGSTER_PG_HOST=$PG_HOST DAGSTER_PG_USER=$PG_USER DAGSTER_PG_PASSWORD='$PG_PASSWORD' DAGSTER_PG_DB=$DAGSTER_DB
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT K25_MLFLOW_UI_URL=http://127.0.0.1:$MLFLOW_PORT
export K25_ARTIFACT_ROOT=s3://$BUCKET/artifacts K25_HOME=$PROD_HOME
export AWS_ENDPOINT_URL_S3=$AWS_ENDPOINT_URL_S3 AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION
export AWS_ACCESS_KEY_ID='$AWS_ACCESS_KEY_ID' AWS_SECRET_ACCESS_KEY='$AWS_SECRET_ACCESS_KEY'
EOF
  echo "up: MLflow http://127.0.0.1:$MLFLOW_PORT, S3 $AWS_ENDPOINT_URL_S3 bucket $BUCKET, Dagster on $PG_HOST/$DAGSTER_DB"
  echo "next: source $PROD_HOME/env && dg dev"
}

down() {
  for name in mlflow moto; do
    if [ -f "$PROD_HOME/$name.pid" ]; then
      pid=$(cat "$PROD_HOME/$name.pid")
      pkill -TERM -P "$pid" 2>/dev/null || true  # the MLflow server's workers
      kill "$pid" 2>/dev/null || true
      rm -f "$PROD_HOME/$name.pid"
    fi
  done
  echo "down"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
