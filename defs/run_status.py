"""MLflow follows the Dagster run's outcome: a failed or canceled run leaves its MLflow parent
(and any child still RUNNING, e.g. of a step process that was killed outright) FAILED or KILLED.

Each asset ends its own MLflow run on every path it sees (defs/resources.py, `stage_run`); these
sensors cover what no step sees: a step process that died, a run canceled before a step started.
They run in the Dagster daemon (`dg dev` starts one) and are on by default.
"""

import dagster as dg

from defs.resources import MlflowTracking


@dg.run_failure_sensor(name="mlflow_failed_runs", default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Mark the MLflow runs of a failed Dagster run FAILED.")
def mlflow_failed_runs(context: dg.RunFailureSensorContext, mlflow: MlflowTracking):
    mlflow.tracker().end_dagster_run(context.dagster_run.run_id, "FAILED")


@dg.run_status_sensor(name="mlflow_canceled_runs", run_status=dg.DagsterRunStatus.CANCELED,
                      default_status=dg.DefaultSensorStatus.RUNNING,
                      description="Mark the MLflow runs of a canceled (terminated) Dagster run KILLED.")
def mlflow_canceled_runs(context: dg.RunStatusSensorContext, mlflow: MlflowTracking):
    mlflow.tracker().end_dagster_run(context.dagster_run.run_id, "KILLED")
