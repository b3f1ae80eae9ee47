"""Training programs started by torchrun; importable without Dagster."""
