"""Dagster definitions: `dagster dev -m pipelines`."""

from pipelines.definitions import build_definitions, defs

__all__ = ["build_definitions", "defs"]
