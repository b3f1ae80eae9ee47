"""Evaluate a checkpoint (first version of the harness; the evaluation issue adds the full suites).

    torchrun --nproc-per-node 2 -m evaluation.run --checkpoint <uri> --mixture <mixture.json> \
        --out <report folder uri>

Suites (examples are split across ranks and gathered on rank 0):
- gsm8k: exact match of the `#### N` answer, greedy decoding, K2.5 chat template, test split.
- gsm8k_answer_nll: mean per-token NLL of the reference final-answer line given the problem.
- digits_caption_retrieval (a vision substitute, not a published benchmark): held-out scikit-learn
  digits the curation never saw; the prediction is the caption, among the ten
  "a handwritten digit <word>" captions, with the lowest NLL given the image.
Per-example records go to Parquet; metrics go to MLflow and, with a markdown table and a bar
chart, to Dagster through Pipes.
"""

from __future__ import annotations

import argparse
import base64
import io
import os

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from curation.image_text import resize_square, to_rgb
from curation.sources import DIGIT_WORDS, sklearn_digits
from infra import storage
from model.config import ModelConfig
from model.multimodal import K25Model
from training import checkpoint
from training.config import ConfigError, stage_config
from training.data import Vocab, gsm8k_path, load_mixture, load_vocab, read_jsonl
from training.engine import init_distributed
from training.policy import final_answer, math_reward, prompt_ids, reference_answer
from training.reporting import Reporter, fail

HELD_OUT_DIGITS_FROM = 1200  # curation takes the first 600 digits by default


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a K2.5 checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--mixture", required=True, help="mixture.json (for the tokenizer)")
    p.add_argument("--out", required=True, help="URI of the report folder")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    p.add_argument("--mlflow-run-id", default=None)
    p.add_argument("--data-root", default=os.environ.get("K25_DATA_ROOT", "../shared/data"))
    return p.parse_args(argv)


def load_model(ckpt_uri: str, vocab: Vocab, device) -> K25Model:
    manifest, _ = checkpoint.read_manifest(ckpt_uri)
    model = K25Model(ModelConfig.from_dict(manifest["model_config"]), vocab.media_pad)
    model.load_state_dict(checkpoint.load(ckpt_uri, names=("model",))["model"])
    return model.to(device).eval()


@torch.no_grad()
def eval_gsm8k(model, vocab, problems, cfg) -> list[dict]:
    prompts = [prompt_ids(vocab, p["question"]) for p in problems]
    outs = model.generate(prompts, cfg.max_new_tokens, {vocab.im_end, vocab.eos}, cfg.temperature, cfg.top_p)
    records = []
    for p, prompt, out in zip(problems, prompts, outs):
        text = vocab.decode(out)
        ref = reference_answer(p["answer"])
        _, correct = math_reward(text, ref, 0.0)
        # NLL of the reference answer line, the signal a tiny model moves before its accuracy does
        target = vocab.encode("#### " + ref) + [vocab.im_end]
        seq = torch.tensor([prompt + target], device=model.backbone.head.weight.device)
        logp = torch.log_softmax(model(seq[:, :-1]).float(), -1)[0, len(prompt) - 1:]
        nll = -logp.gather(-1, seq[0, len(prompt):, None]).mean().item()
        records.append({"suite": "gsm8k", "prompt": p["question"], "output": text, "extracted": final_answer(text),
                        "reference": ref, "score": float(correct), "answer_nll": nll, "tokens": len(out)})
    return records


@torch.no_grad()
def eval_digits(model, vocab, n: int, rank: int, world: int) -> list[dict]:
    size = 56
    pads = (size // 28) ** 2
    head = [vocab.media_begin] + vocab.encode("image") + [vocab.media_content] + [vocab.media_pad] * pads + [vocab.media_end]
    captions = [vocab.encode(f"a handwritten digit {w}") + [vocab.eos] for w in DIGIT_WORDS]
    device = model.backbone.head.weight.device
    records = []
    digits = list(sklearn_digits())[HELD_OUT_DIGITS_FROM:HELD_OUT_DIGITS_FROM + n]
    for i, rec in enumerate(digits):
        if i % world != rank:
            continue
        image = torch.from_numpy(np.array(resize_square(to_rgb(rec.image), size)))
        width = max(len(c) for c in captions)
        seqs = torch.tensor([head + c + [vocab.pad] * (width - len(c)) for c in captions], device=device)
        logits = model(seqs[:, :-1], [image] * len(captions)).float()
        logp = torch.log_softmax(logits, -1).gather(-1, seqs[:, 1:, None]).squeeze(-1)
        mask = torch.zeros_like(logp)
        for j, c in enumerate(captions):
            mask[j, len(head) - 1:len(head) - 1 + len(c)] = 1
        nll = -(logp * mask).sum(-1) / mask.sum(-1)
        pred = DIGIT_WORDS[int(nll.argmin())]
        truth = rec.caption.rsplit(" ", 1)[-1]
        records.append({"suite": "digits_caption_retrieval", "prompt": rec.name, "output": pred, "extracted": pred,
                        "reference": truth, "score": float(pred == truth), "answer_nll": float(nll.min()), "tokens": 0})
    return records


def summarize(df: pd.DataFrame) -> dict[str, float]:
    out = {}
    for suite, part in df.groupby("suite"):
        out[f"{suite}/accuracy"] = float(part["score"].mean())
        out[f"{suite}/n"] = float(len(part))
    gsm = df[df.suite == "gsm8k"]
    if len(gsm):
        out["gsm8k/answer_nll"] = float(gsm["answer_nll"].mean())
    return out


def report(metrics: dict[str, float], ckpt_uri: str) -> tuple[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = {k.split("/")[0]: v for k, v in metrics.items() if k.endswith("/accuracy")}
    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    ax.bar(list(acc), list(acc.values()))
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()))
    md = f"Checkpoint `{ckpt_uri}`\n\n| metric | value |\n|---|---|\n{rows}\n"
    return md, buf.getvalue()


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        cfg = stage_config(args.profile, "evaluation", dict(kv.split("=", 1) for kv in args.overrides))
        checkpoint.read_manifest(args.checkpoint)
        problems = read_jsonl(gsm8k_path(args.data_root, "test"))
    except (ConfigError, checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    rank, world = init_distributed()
    reporter = Reporter(rank, "evaluation", args.tracking_uri, args.mlflow_run_id)
    vocab = load_vocab(load_mixture(args.mixture))
    model = load_model(args.checkpoint, vocab, torch.device("cpu"))
    mine = [p for i, p in enumerate(problems[: cfg.eval_examples]) if i % world == rank]
    records = eval_gsm8k(model, vocab, mine, cfg) + eval_digits(model, vocab, cfg.eval_examples * 4, rank, world)
    gathered = [None] * world
    if world > 1:
        dist.all_gather_object(gathered, records)
    else:
        gathered = [records]
    if rank == 0:
        df = pd.DataFrame([r for part in gathered for r in part])
        metrics = summarize(df)
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        storage.write_bytes(storage.join(args.out, "records.parquet"), buf.getvalue())
        md, png = report(metrics, args.checkpoint)
        storage.write_text(storage.join(args.out, "report.md"), md)
        storage.write_bytes(storage.join(args.out, "accuracy.png"), png)
        reporter.metrics(0, {k.replace("/", "_"): v for k, v in metrics.items()})
        if reporter.tracker and reporter.run_id:
            reporter.tracker.client.log_text(reporter.run_id, md, "report.md")
            reporter.tracker.client.log_text(reporter.run_id, df.to_csv(index=False), "records.csv")
        chart = f"![accuracy](data:image/png;base64,{base64.b64encode(png).decode()})"
        digest = storage.sha256_bytes(buf.getvalue())
        reporter.log(md)
        reporter.finish({"report_md": md, "accuracy_chart": chart, "report_uri": args.out,
                         "evaluated_checkpoint": args.checkpoint, **metrics}, digest)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
