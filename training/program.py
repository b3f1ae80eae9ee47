"""The command line of every stage program: a resolved spec in, plus how this process runs.

    torchrun ... -m training.pretrain --spec <run dir>/spec.json          # as Dagster launches it
    torchrun ... -m training.pretrain --stage joint_pretrain --profile tiny \
        --mixture <mixture.json> --run-dir <uri> [--init-from <checkpoint>] [--set optimizer.lr=1e-3]

With `--spec` the program reads the spec the asset resolved and wrote; standalone, it resolves the
spec itself (recipes/, the same resolution the asset runs) and rank 0 writes `spec.json` into the
run directory, so both ways leave the same record. The process-level settings (resume mode, where
MLflow is, the benchmark data) are a `RunContext`, not part of the spec: they say how this process
runs, not what is trained.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from infra.refs import CheckpointRef, MissingReference, MixtureRef, ToolDataRef
from infra.settings import default_data_root
from infra.spec import SpecError, read_spec, write_spec
from training.reporting import fail
from training.runtime import rank_env
from training.spec import StageInputs, StageSpec, phase_dirs


@dataclass(frozen=True)
class RunContext:
    resume: str = "auto"  # auto | must | never
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    data_root: str = ""


def _parser(stages: tuple[str, ...]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="K2.5 stage program (run under torchrun)")
    p.add_argument("--spec", default=None, help="URI of the resolved spec.json (what Dagster launches)")
    standalone = p.add_argument_group("standalone (no --spec): resolve the spec here")
    standalone.add_argument("--stage", choices=stages, default=stages[0])
    standalone.add_argument("--profile", default="tiny", help="profile name: tiny, small, k25")
    standalone.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                            help="override a field of the spec, e.g. optimizer.lr=1e-3 or ctx4k.data.batch_size=2")
    standalone.add_argument("--mixture", help="URI of mixture.json (data + tokenizer)")
    standalone.add_argument("--run-dir", help="URI of this run's checkpoint folder")
    standalone.add_argument("--init-from", default=None, help="URI of the upstream stage's checkpoint")
    standalone.add_argument("--tool-data", default=None, help="URI of sft_tool_data's folder (SFT)")
    standalone.add_argument("--judge", default=None, help="URI of the grm stage's checkpoint (RL with rl.grm_weight > 0)")
    p.add_argument("--resume", choices=("auto", "must", "never"), default="auto",
                   help="auto: resume from run-dir/latest if present; must: fail if absent")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    p.add_argument("--mlflow-run-id", default=None)
    p.add_argument("--data-root", default=None, help="benchmark data folder (default: K25_DATA_ROOT or ../shared/data)")
    return p


def parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"--set expects PATH=VALUE, got {item!r}")
        overrides[key.strip()] = value
    return overrides


def standalone_spec(a: argparse.Namespace) -> StageSpec:
    """Resolve a spec from the command line (the CLI's one resolution) and record it."""
    import recipes  # the profiles; only a standalone run needs them

    if not a.mixture or not a.run_dir:
        raise SpecError("without --spec, --mixture and --run-dir are required")
    inputs = StageInputs(mixture=MixtureRef.at(a.mixture), run_dir=a.run_dir,
                         init_from=CheckpointRef.at(a.init_from) if a.init_from else None,
                         tool_data=ToolDataRef.at(a.tool_data) if a.tool_data else None,
                         judge=CheckpointRef.at(a.judge) if a.judge else None)
    return recipes.resolve_stage(a.profile, a.stage, parse_overrides(a.overrides), inputs)


def committed_anywhere(spec: StageSpec) -> bool:
    """Whether the run folder (or one of its phase folders) holds a committed checkpoint."""
    from training import checkpoint

    return any(checkpoint.latest(d) for d in [spec.inputs.run_dir, *phase_dirs(spec)])


def program_args(stages: tuple[str, ...], argv: list[str] | None = None) -> tuple[StageSpec, RunContext]:
    """(spec, run context) of a stage program, or a clear exit naming the problem."""
    a = _parser(stages).parse_args(argv)
    try:
        spec = read_spec(StageSpec, a.spec) if a.spec else standalone_spec(a)
    except (SpecError, MissingReference) as e:
        fail(str(e))
    if spec.stage not in stages:
        fail(f"spec is for stage {spec.stage!r}; this program runs {stages}")
    if spec.inputs is None:
        fail("spec has no inputs (mixture, run_dir): resolve it with inputs before launch")
    if a.resume == "must" and not committed_anywhere(spec):
        fail(f"--resume must: no committed checkpoint under {spec.inputs.run_dir}")
    if not a.spec and rank_env()[0] == 0:  # standalone: record what was resolved, as the asset does
        write_spec(spec, spec.inputs.run_dir)
    return spec, RunContext(a.resume, a.tracking_uri, a.mlflow_run_id, a.data_root or default_data_root())
