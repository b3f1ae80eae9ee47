"""Zero-vision SFT on executed IPython traces, measured on held-out image tasks.

    python -m benchmarks.bench_ipython_tools [--quick] [--steps 1500] [--tasks-per-family 16] [--keep DIR]

What runs (needs root, like the kernel; everything is the shipped code):
  1. the tiny data (curated text, tokenizer, mixture) and `sft_tool_data`'s builder: image tasks
     from real photos solved by teacher programs executed in the sandboxed kernel, plus
     program-of-thought GSM8K, kept only when the real output gives the right answer;
  2. `training.sft` under torchrun (2 ranks, gloo) from fresh tiny weights for `--steps` steps,
     rows drawn only from the tool traces and PoT (this benchmark trains longer than CI does);
  3. the `ipython_tools` suite on held-out tasks (test-split photos, larger mazes, and the diff
     family SFT never saw), greedy: the tool arm, the same checkpoint with the tool disabled,
     and the zero-vision probe (the image as media tokens, its text description removed).
Baseline measured in the same run: the no-tool arm of the same checkpoint.
Ends with `RESULT well_formed=... cell_ok=... tool_gain_count=... tool_gain_maze=... probe_ratio=...`
(gains in accuracy points over the no-tool arm).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(helpers, mixture_uri: str, root: str, run_dir: str, args) -> None:
    """`training.sft` under torchrun on the tool traces and PoT only (no plain chat rows)."""
    t1 = time.perf_counter()
    sets = [f"train.steps={args.steps}", "sft.chat_share=0", f"optimizer.lr={args.lr}",
            f"checkpoint.every={max(args.steps // 2, 1)}", "train.log_every=20"]
    proc = helpers.run_torchrun("training.sft", ["--profile", "tiny", "--mixture", mixture_uri, "--run-dir", run_dir,
                                                 "--tool-data", str(Path(root) / "tool_data"),
                                                 *sum((["--set", s] for s in sets), [])], timeout=4 * 3600)
    if proc.returncode != 0:
        raise SystemExit(f"training.sft failed:\n{proc.stdout[-3000:]}")
    losses = [ln for ln in proc.stdout.splitlines() if " loss " in ln]
    print("\n".join(losses[:1] + losses[-2:]))
    print(f"sft: {args.steps} steps in {time.perf_counter() - t1:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--traces-per-family", type=int, default=220)
    p.add_argument("--tasks-per-family", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--keep", default=None, help="keep the run folder here (default: a temporary folder)")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the checkpoint already trained under --keep (skip data and training)")
    p.add_argument("--quick", action="store_true", help="60 SFT steps, 4 tasks per family (about 3 minutes on 2 cores)")
    args = p.parse_args()
    if args.quick:
        args.steps, args.traces_per_family, args.tasks_per_family = 60, 40, 4
    sys.path.insert(0, str(REPO / "tests"))
    import helpers
    import pandas as pd

    from agents.envs.image_tasks import FAMILIES, make_task
    from agents.kernel import Kernel
    from agents.sft_data import ToolDataConfig, build_tool_data
    from curation.mixture import read_mixture
    from evaluation.agent_suites import eval_ipython_tools, summarize_ipython_tools
    from evaluation.config import EvalConfig
    from infra.refs import CheckpointRef
    from training import checkpoint
    from training.data import gsm8k_path, load_vocab, read_jsonl

    root = args.keep or tempfile.mkdtemp(prefix="bench-ipython-")
    run_dir = str(Path(root) / "sft")
    if args.eval_only and not (args.keep and checkpoint.latest(run_dir)):
        raise SystemExit("--eval-only needs --keep DIR holding a trained run (DIR/sft/latest)")
    t0 = time.perf_counter()
    with Kernel() as kernel:
        if args.eval_only:
            mixture = read_mixture(str(Path(root) / "data" / "mixture"))
        else:
            data = helpers.build_tiny_data(str(Path(root) / "data"))
            mixture = data.mixture
            manifest = build_tool_data(str(Path(root) / "tool_data"),
                                       read_jsonl(gsm8k_path(str(helpers.DATA_ROOT), "train")),
                                       ToolDataConfig(args.traces_per_family, args.traces_per_family), kernel=kernel, log=print)
            print(f"data and traces: {time.perf_counter() - t0:.0f} s; kept {manifest['kept']}")
            train(helpers, data.mixture_uri, root, run_dir, args)
        model = checkpoint.load_model(CheckpointRef.at(checkpoint.latest(run_dir))).eval()
        vocab = load_vocab(mixture)
        tasks = [make_task(f, "test", i, 0) for i in range(args.tasks_per_family) for f in FAMILIES]
        cfg = EvalConfig(temperature=0.0, top_p=1.0)
        t2 = time.perf_counter()
        records = eval_ipython_tools(model, vocab, tasks, cfg, kernel=kernel)
    pd.DataFrame(records).to_parquet(Path(root) / "records.parquet", index=False)
    figures = summarize_ipython_tools(records)
    print(f"evaluation: {len(tasks)} held-out tasks x 3 arms in {time.perf_counter() - t2:.0f} s")
    for k, v in sorted(figures.items()):
        print(f"  {k} = {v:.3f}")
    (Path(root) / "figures.json").write_text(json.dumps(figures, indent=1))
    g = figures.get
    print(f"RESULT well_formed={g('ipython_tools/well_formed', 0):.3f} cell_ok={g('ipython_tools/cell_ok', 0):.3f} "
          f"tool_gain_count={g('ipython_tools/tool_gain_count', 0):.1f} tool_gain_maze={g('ipython_tools/tool_gain_maze', 0):.1f} "
          f"probe_ratio={g('ipython_tools/probe_ratio', 0):.3f} tool_call_rate={g('ipython_tools/tool_call_rate', 0):.3f} "
          f"tool_accuracy={g('ipython_tools/tool_accuracy', 0):.3f} no_tool_accuracy={g('ipython_tools/no_tool_accuracy', 0):.3f} "
          f"steps={args.steps}")


if __name__ == "__main__":
    main()
