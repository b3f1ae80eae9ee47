"""The Dagster definitions of the K2.5 pipeline: every domain under defs/, plus the resources.

    dg dev                       # the UI at http://127.0.0.1:3000
    dg launch --assets '*'       # the whole graph with the run's profile (tiny by default)
    dg check defs
"""

from pathlib import Path

import dagster as dg

from defs.resources import make_resources

ROOT = Path(__file__).resolve().parent


def build_definitions(artifact_root: str | None = None, tracking_uri: str | None = None,
                      nproc_per_node: int = 0, profile: str = "tiny") -> dg.Definitions:
    """The definitions with resources bound (tests pass their own artifact root and tracking URI)."""
    return dg.Definitions.merge(dg.load_from_defs_folder(project_root=ROOT),
                                dg.Definitions(resources=make_resources(artifact_root, tracking_uri, nproc_per_node,
                                                                        profile)))


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
