"""How a stage program is started: pure functions that build commands (no Dagster here).

Locally every training stage runs as `python -m torch.distributed.run --standalone
--nproc-per-node N -m <module> ...` (torchrun without relying on PATH). On a cluster the same
module runs under `srun torchrun` (Slurm) or in a Kubernetes JobSet; those launchers reuse
`program_args` so the program sees identical arguments everywhere.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def torchrun_command(module: str, program_args: list[str], nproc_per_node: int, python: str | None = None,
                     stop_grace_s: int = 600) -> list[str]:
    """torchrun passes a stop (SIGINT, SIGTERM) on to every rank and waits `stop_grace_s` for them
    to commit a checkpoint and exit before it kills them (its default, 30 s, is too short for a
    large model's save)."""
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc_per_node}", f"--shutdown-timeout={stop_grace_s}", "-m", module, *program_args]


def program_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for stage programs: project importable, no thread oversubscription on CPU,
    DeepSpeed on its CPU accelerator when there is no GPU."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # usage telemetry calls an outside address
    try:
        import torch

        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:
        pass
    return env


def slurm_script(module: str, program_args: list[str], nodes: int, gpus_per_node: int, job_name: str) -> str:
    """An sbatch script running the same program under `srun torchrun` with c10d rendezvous."""
    args = " ".join(program_args)
    return f"""#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus_per_node}
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun --nnodes {nodes} --nproc-per-node {gpus_per_node} --rdzv-id $SLURM_JOB_ID \\
  --rdzv-backend c10d --rdzv-endpoint $head:29500 -m {module} {args}
"""
