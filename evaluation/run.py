"""Evaluate a checkpoint on the benchmark suites (run under torchrun; examples split across ranks).

    torchrun --nproc-per-node 2 -m evaluation.run --spec <report folder>/spec.json
    torchrun --nproc-per-node 2 -m evaluation.run --checkpoint <uri> --mixture <mixture.json> \
        --out <report folder uri> [--profile tiny] [--set suites=gsm8k,mmlu --set limit=50]

Text suites (evaluation/suites.py) are generated with the K2.5 chat template, batched through the
model's latent KV cache, with the spec's sampling settings (evaluation/config.py) and avg@k
samples per prompt; math answers are graded by Math-Verify (agents/rewards/math.py), MMLU letters read by
evaluation/scorers.py, HumanEval checks run in agents/sandbox.py. Vision suites (evaluation/vision_suites.py, substitutes built by this
project) are multiple choice scored by likelihood. Rank 0 gathers every per-example record into
`records.parquet`, writes `report.md` and `accuracy.png`, logs metrics to MLflow and reports them to
Dagster through Pipes.
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from agents.chat import render
from agents.sandbox import SandboxUnavailable, run_untrusted
from evaluation import base_mode, vision_suites
from evaluation import suites as text_suites
from evaluation.agent_suites import PRIMARY_ARM
from evaluation.config import TEXT_SUITES, VISION_SUITES, EvalConfig
from infra import storage
from infra.refs import CheckpointRef, MissingReference, MixtureRef
from infra.settings import default_data_root
from infra.spec import Block, SpecError, read_spec, write_spec
from model.multimodal import K25Model
from model.tokens import Vocab
from training import checkpoint
from training.data import load_vocab
from training.program import parse_overrides
from training.reporting import Reporter, fail
from training.runtime import compute_init, rank_env


class EvalSpec(Block):
    """What one evaluation run does: the settings and what it reads and writes; spec.json."""

    profile: str
    """The profile the settings were resolved from."""
    evaluation: EvalConfig
    checkpoint: CheckpointRef
    """The evaluated checkpoint."""
    mixture: MixtureRef
    """For the tokenizer."""
    out: str
    """The report folder (spec.json lies in it)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a K2.5 checkpoint")
    p.add_argument("--spec", default=None, help="URI of the resolved spec.json (what Dagster launches)")
    p.add_argument("--checkpoint", help="standalone: the checkpoint to evaluate")
    p.add_argument("--mixture", help="standalone: mixture.json (for the tokenizer)")
    p.add_argument("--out", help="standalone: URI of the report folder")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    p.add_argument("--mlflow-run-id", default=None)
    p.add_argument("--data-root", default=None)
    return p.parse_args(argv)


def resolve_spec(args) -> EvalSpec:
    """The spec the asset wrote, or (standalone) resolved here once and written by rank 0."""
    if args.spec:
        return read_spec(EvalSpec, args.spec)
    import recipes

    if not (args.checkpoint and args.mixture and args.out):
        raise SpecError("without --spec, --checkpoint, --mixture and --out are required")
    spec = EvalSpec(profile=args.profile, evaluation=recipes.resolve_evaluation(args.profile, parse_overrides(args.overrides)),
                    checkpoint=CheckpointRef.at(args.checkpoint), mixture=MixtureRef.at(args.mixture), out=args.out)
    if rank_env()[0] == 0:
        write_spec(spec, spec.out)
    return spec


def missing_suite_data(cfg: EvalConfig, data_root: str) -> list[str]:
    """The errors of every configured text suite whose data files are absent (cheap, no model)."""
    missing = []
    for name in cfg.suites:
        if name in TEXT_SUITES:
            try:
                text_suites.load_suite(name, data_root, limit=1)
            except text_suites.SuiteDataMissing as e:
                missing.append(str(e))
    return missing


def load_work(cfg: EvalConfig, data_root: str) -> dict[str, list]:
    """Every configured suite's examples, loaded before any model work (bad data fails here)."""
    limit = cfg.limit or None
    work = {}
    for name in cfg.suites:
        if name in TEXT_SUITES:
            work[name] = text_suites.load_suite(name, data_root, limit=limit)
        else:
            work[name] = vision_suites.build_vision_suite(name, limit=limit)
    return work


# ----------------------------------------------------------------------------------------------
# text suites: batched sampling, avg@k

def prompt_budget(model: K25Model, cfg: EvalConfig) -> int:
    """Prompt tokens kept (from the end): the context minus the answer budget, or the config's cap."""
    budget = model.cfg.max_seq_len - min(cfg.max_new_tokens, model.cfg.max_seq_len // 2)
    return min(budget, cfg.max_prompt_tokens) if cfg.max_prompt_tokens else budget


@torch.no_grad()
def eval_text_suite(model: K25Model, vocab: Vocab, suite: str, examples: list, cfg: EvalConfig) -> list[dict]:
    k = cfg.samples_for(suite)
    budget = prompt_budget(model, cfg)
    max_new = min(cfg.max_new_tokens, model.cfg.max_seq_len - 1)
    jobs = [(ex, s) for ex in examples for s in range(k)]  # every prompt k times: avg@k
    records = []
    for start in range(0, len(jobs), cfg.batch_size):
        batch = jobs[start:start + cfg.batch_size]
        prompts = [render([{"role": "user", "content": ex.prompt}], vocab, add_generation_prompt=True)[-budget:]
                   for ex, _ in batch]
        device = model.backbone.head.weight.device
        generators = [text_suites.request_generator(cfg.seed, ex.id, s, device) for ex, s in batch]
        outs = model.generate(prompts, max_new, {vocab.im_end, vocab.eos}, cfg.temperature, cfg.top_p, generators)
        for (ex, sample), prompt, out in zip(batch, prompts, outs):
            text = vocab.tok.decode([t for t in out if t not in (vocab.im_end, vocab.eos)])
            scored = text_suites.score(ex, text, timeout_s=cfg.code_timeout_s, memory_mb=cfg.code_memory_mb)
            records.append({"suite": suite, "id": ex.id, "sample": sample, "prompt": ex.prompt, "output": text,
                            "extracted": str(scored.get("extracted")), "reference": str(ex.reference),
                            "score": float(scored["score"]), "prompt_tokens": len(prompt), "output_tokens": len(out),
                            "chance": chance_of(ex)})
    return records


def chance_of(example) -> float:
    """The expected score of a uniform guess: 1/options for multiple choice, 0 for open answers."""
    if example.kind == "choice":
        return 1.0 / len(text_suites.MMLU_CHOICES)
    return 0.0


@torch.no_grad()
def eval_vision_suite(model: K25Model, vocab: Vocab, suite: str, examples: list, device) -> list[dict]:
    records = []
    for ex in examples:
        r = vision_suites.score_by_likelihood(model, vocab, ex, device)
        records.append({"suite": suite, "id": ex.id, "sample": 0, "prompt": ex.context_text,
                        "output": ex.choices[r["pred"]], "extracted": str(r["pred"]), "reference": str(ex.answer),
                        "score": r["score"], "prompt_tokens": 0, "output_tokens": 0,
                        "chance": 1.0 / len(ex.choices)})
    return records


# ----------------------------------------------------------------------------------------------
# summary and report

BOOTSTRAP_RESAMPLES = 2000


def bootstrap_ci(per_example: np.ndarray, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over examples (examples resampled with
    replacement, a fixed seed so that a report is reproducible)."""
    if len(per_example) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = per_example[rng.integers(0, len(per_example), (BOOTSTRAP_RESAMPLES, len(per_example)))].mean(1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def summarize(df: pd.DataFrame, cfg: EvalConfig) -> dict[str, float]:
    """Per suite: accuracy = avg@k (mean over samples, then over examples), n = examples; for
    HumanEval also the unbiased pass@k for k in {1, samples}."""
    out = {}
    for suite, part in df.groupby("suite"):
        per_example = part.groupby("id")["score"].mean()
        out[f"{suite}/accuracy"] = float(per_example.mean())
        out[f"{suite}/n"] = float(len(per_example))
        out[f"{suite}/ci_low"], out[f"{suite}/ci_high"] = bootstrap_ci(per_example.to_numpy())
        if "chance" in part and part["chance"].notna().all():
            out[f"{suite}/chance"] = float(part.groupby("id")["chance"].mean().mean())
        out[f"{suite}/samples"] = float(cfg.samples_for(suite) if suite in TEXT_SUITES else 1)
        if "arm" in part and part["arm"].notna().any():  # agent suites: accuracy is the primary arm's
            tool = part[part["arm"] == PRIMARY_ARM[suite]].groupby("id")["score"].mean()
            out[f"{suite}/accuracy"] = float(tool.mean())
            out[f"{suite}/n"] = float(len(tool))
        if suite == "humaneval":
            counts = part.groupby("id")["score"].agg(["count", "sum"])
            for kk in sorted({1, cfg.samples_for(suite)}):
                out[f"{suite}/pass@{kk}"] = float(np.mean([text_suites.pass_at_k(int(n), int(c), kk)
                                                            for n, c in counts.itertuples(index=False)]))
    return out


MODE_TEXT = {
    "base": "a base model: MMLU by log-likelihood of each option, few-shot generation with stop sequences",
    "chat": "a post-trained model: the chat template and an instruction, answers extracted from the reply",
}


def report(metrics: dict[str, float], ckpt_uri: str, cfg: EvalConfig, mode: str = "chat") -> tuple[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = {k.split("/")[0]: v for k, v in metrics.items() if k.endswith("/accuracy")}
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(acc)), 3.2), dpi=80)
    colors = ["tab:orange" if s in VISION_SUITES else "tab:blue" for s in acc]
    ax.bar(list(acc), list(acc.values()), color=colors)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (avg@k)")
    ax.set_title("blue: benchmarks, orange: vision substitutes (not published benchmarks)", fontsize=8)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    rows = []
    for suite in acc:
        kind = ("vision substitute" if suite in VISION_SUITES else
                "agent, held-out image tasks" if suite == "ipython_tools" else
                "agent swarm, held-out search tasks (item-F1)" if suite == "widesearch_local" else "benchmark")
        extra = f" (pass@1 {metrics[f'{suite}/pass@1']:.4f})" if f"{suite}/pass@1" in metrics else ""
        ci = (f"[{metrics[f'{suite}/ci_low']:.3f}, {metrics[f'{suite}/ci_high']:.3f}]"
              if f"{suite}/ci_low" in metrics else "n/a")
        chance = f"{metrics[f'{suite}/chance']:.3f}" if metrics.get(f"{suite}/chance") else "-"
        rows.append(f"| {suite} | {kind} | {int(metrics[f'{suite}/n'])} | {int(metrics[f'{suite}/samples'])} | "
                    f"{metrics[f'{suite}/accuracy']:.4f}{extra} | {ci} | {chance} |")
    settings = f"temperature {cfg.temperature}, top-p {cfg.top_p}, max new tokens {cfg.max_new_tokens}"
    asked = (MODE_TEXT["base"] if mode == "base" else MODE_TEXT["chat"])
    md = (f"Checkpoint `{ckpt_uri}`; sampling: {settings}\n\nMode: **{mode}** ({asked})\n\n| suite | kind | examples | samples (avg@k) | accuracy | 95% CI (bootstrap) | chance |\n"
          "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    if "ipython_tools/well_formed" in metrics:
        figures = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("ipython_tools/")
                   and not k.endswith(("/n", "/samples"))}
        md += ("\nipython_tools (arms: tool = image as text + kernel; no_tool = tool disabled; media = image as "
               "media tokens, no description):\n\n| figure | value |\n|---|---|\n"
               + "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(figures.items())) + "\n")
    if "widesearch_local/swarm_item_f1" in metrics:
        md += ("\nwidesearch_local (same checkpoint, same critical-step budget; swarm sub-agents are frozen copies):\n\n"
               "| arm | item-F1 | success | critical steps | sub-agents |\n|---|---|---|---|---|\n"
               + "\n".join(f"| {arm} | {metrics.get(f'widesearch_local/{arm}_item_f1', 0):.4f} | "
                           f"{metrics.get(f'widesearch_local/{arm}_success', 0):.4f} | "
                           f"{metrics.get(f'widesearch_local/{arm}_critical_steps', 0):.2f} | "
                           f"{metrics.get(f'widesearch_local/{arm}_subagents', 0):.2f} |" for arm in ("single", "swarm", "discard_all"))
               + "\n")
    return md, buf.getvalue()


def mlflow_name(key: str) -> str:
    """MLflow metric name of a summary key; vision substitutes carry `substitute_` so that no chart
    or comparison in MLflow passes them off as the published benchmarks."""
    name = key.replace("/", "_").replace("@", "_at_")
    return f"substitute_{name}" if key.split("/")[0] in VISION_SUITES else name


def gather(records: list[dict], world: int) -> list[dict]:
    if world == 1:
        return records
    parts = [None] * world
    dist.all_gather_object(parts, records)
    return [r for part in parts for r in part]


def evaluate(spec: EvalSpec, args, work: dict[str, list], mode: str, shots: dict[str, str], manifest: dict,
             mixture, reporter: Reporter, rank: int, world: int, device) -> None:
    """Score every suite on this rank, gather, and (rank 0) write the report and log it."""
    cfg = spec.evaluation
    vocab = load_vocab(mixture)
    model = checkpoint.load_model(spec.checkpoint, device, manifest=manifest).eval()
    records = []
    for suite, examples in work.items():
        mine = examples[rank::world]
        if suite in TEXT_SUITES and mode == "base" and suite == "mmlu":
            records += base_mode.eval_choice_by_likelihood(model, vocab, suite, mine, model.cfg.max_seq_len, device)
        elif suite in TEXT_SUITES and mode == "base":
            records += base_mode.eval_generation(model, vocab, suite, mine, cfg, shots)
        elif suite in TEXT_SUITES:
            records += eval_text_suite(model, vocab, suite, mine, cfg)
        else:
            records += eval_vision_suite(model, vocab, suite, mine, device)
        reporter.log(f"{suite}: {len(mine)} examples scored on rank {rank}")
    agent = [] if spec.checkpoint.stage not in cfg.agent_stages else list(cfg.agent_suites)
    if "ipython_tools" in agent:
        from evaluation.agent_suites import eval_ipython_tools, ipython_tasks

        tasks = ipython_tasks(cfg.agent_limit, cfg.seed)[rank::world]
        records += eval_ipython_tools(model, vocab, tasks, cfg)
        reporter.log(f"ipython_tools: {len(tasks)} tasks x 3 arms on rank {rank}")
    if "widesearch_local" in agent:
        from evaluation.agent_suites import eval_widesearch, widesearch_tasks

        tasks = widesearch_tasks(cfg.agent_limit, cfg.seed)[rank::world]
        records += eval_widesearch(model, vocab, tasks, cfg)
        reporter.log(f"widesearch_local: {len(tasks)} tasks x 3 arms (single, swarm, discard_all) on rank {rank}")
    records = gather(records, world)
    if rank == 0:
        df = pd.DataFrame(records)
        metrics = summarize(df, cfg)
        metrics["mode"] = float(mode == "base")  # 0 = chat, 1 = base (report.md says it in words)
        if "ipython_tools" in agent:
            from evaluation.agent_suites import summarize_ipython_tools

            metrics.update(summarize_ipython_tools([r for r in records if r["suite"] == "ipython_tools"]))
        if "widesearch_local" in agent:
            from evaluation.agent_suites import summarize_widesearch

            metrics.update(summarize_widesearch([r for r in records if r["suite"] == "widesearch_local"]))
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        storage.write_bytes(storage.join(spec.out, "records.parquet"), buf.getvalue())
        md, png = report(metrics, spec.checkpoint.uri, cfg, mode)
        storage.write_text(storage.join(spec.out, "report.md"), md)
        storage.write_bytes(storage.join(spec.out, "accuracy.png"), png)
        # Logged against the evaluated LoggedModel too: its MLflow page lists this evaluation.
        reporter.metrics(0, {mlflow_name(k): v for k, v in metrics.items()}, model_id=spec.checkpoint.model_id)
        if reporter.tracker and reporter.run_id:
            client = reporter.tracker.client
            client.log_text(reporter.run_id, md, "report.md")
            client.log_image(reporter.run_id, _png_array(png), "accuracy.png")
            client.log_dict(reporter.run_id, spec.model_dump(mode="json"), "spec.json")
            client.log_text(reporter.run_id, df.to_csv(index=False), "records.csv")
        reporter.log(md)
        reporter.finish({"report_md": md, "accuracy_png_uri": storage.join(spec.out, "accuracy.png"), "report_uri": spec.out,
                         "records_uri": storage.join(spec.out, "records.parquet"),
                         "evaluated_checkpoint": spec.checkpoint.uri, **metrics}, storage.sha256_bytes(buf.getvalue()))


def sandbox_preflight(cfg: EvalConfig) -> None:
    """One trivial program through the HumanEval sandbox, before any suite runs: without root,
    namespaces or a memory cgroup, HumanEval could not be scored, and finding that out after
    GSM8K and MMLU were computed would throw their work away."""
    result = run_untrusted("print('sandbox ok')\n", 30, min(cfg.code_memory_mb, 256))
    if result.status != "passed" or "sandbox ok" not in result.detail:
        raise SandboxUnavailable(f"humaneval needs the sandbox, and a trivial program failed in it: {result.status}: "
                                 f"{result.detail[-300:]}")


def main(argv=None) -> None:
    args = parse_args(argv)
    try:  # everything cheap is checked before the process group and the model exist
        spec = resolve_spec(args)
        cfg = spec.evaluation
        manifest, mixture = spec.checkpoint.verify(), spec.mixture.verify()
        work = load_work(cfg, args.data_root or default_data_root())
        mode = cfg.mode_for(spec.checkpoint.stage)  # base or chat: how the text suites ask
        needs_shots = mode == "base" and any(s in TEXT_SUITES and s not in ("mmlu", "humaneval") for s in work)
        shots = base_mode.load_shots(args.data_root or default_data_root()) if needs_shots else {}
        if "humaneval" in work:
            sandbox_preflight(cfg)
    except (SpecError, MissingReference, FileNotFoundError, ValueError, SandboxUnavailable) as e:
        fail(str(e))
    rank, world, device = compute_init()
    reporter = Reporter(rank, "evaluation", args.tracking_uri, args.mlflow_run_id)
    try:
        evaluate(spec, args, work, mode, shots, manifest, mixture, reporter, rank, world, device)
    except BaseException:
        reporter.finish({}, None, ok=False)  # a standalone MLflow run is ended (KILLED), never left RUNNING
        raise
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _png_array(png: bytes):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


if __name__ == "__main__":
    main()
