"""Every module of the project imports on its own in a fresh interpreter: no import cycles, no
module that only works when something else was imported first (`import defs.common` once failed
this way through a package __init__ that imported the definitions)."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("curation", "defs", "evaluation", "infra", "model", "recipes", "training", "benchmarks")


def project_modules() -> list[str]:
    modules = ["definitions"]
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def import_alone(module: str) -> tuple[str, int, str]:
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return module, proc.returncode, proc.stderr[-2000:]


def test_the_module_list_covers_the_packages():
    modules = project_modules()
    assert {"definitions", "defs.common", "defs.evaluation.automation", "training.spec", "recipes"} <= set(modules)
    assert len(modules) > 60


def test_every_module_imports_alone_in_a_fresh_interpreter():
    with ThreadPoolExecutor(max_workers=2) as pool:  # two cores: two interpreters at a time
        results = list(pool.map(import_alone, project_modules()))
    failed = {m: err for m, rc, err in results if rc != 0}
    assert not failed, "\n\n".join(f"{m}:\n{err}" for m, err in failed.items())


def benchmark_modules() -> list[str]:
    return [f"benchmarks.{p.stem}" for p in sorted((ROOT / "benchmarks").glob("bench_*.py"))]


def help_text(module: str) -> tuple[str, int, str]:
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return module, proc.returncode, proc.stderr[-2000:] if proc.returncode else proc.stdout


def test_every_benchmark_prints_its_help():
    """`--help` is how a user meets a benchmark first (a stray `%` in one help string once made
    bench_parl's --help crash inside argparse); every benchmark must also offer --quick."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(help_text, benchmark_modules()))
    assert len(results) >= 10
    failed = {m: out for m, rc, out in results if rc != 0}
    assert not failed, "\n\n".join(f"{m}:\n{out}" for m, out in failed.items())
    no_quick = [m for m, _, out in results if "--quick" not in out]
    assert not no_quick, f"benchmarks without --quick: {no_quick}"
