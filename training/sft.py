"""Zero-vision SFT (RECIPE.md §5): text-only multi-turn SFT with IPython tool calls, loss on the
assistant turns (tool calls included) only.

    torchrun --nproc-per-node 2 -m training.sft --spec <run dir>/spec.json
    torchrun --nproc-per-node 2 -m training.sft --profile tiny --mixture <mixture.json> \
        --run-dir <uri> --init-from <midtrain checkpoint> [--tool-data <sft_tool_data folder>]

Rows are drawn from four sources in the shares of `sft.*_share`: the executed IPython image
traces, program-of-thought GSM8K traces and widesearch_local search traces of `sft_tool_data`
(images appear only as text: the pixels stayed in the kernel), and plain GSM8K chat. No media
token reaches the model, so the vision encoder sees no data here (zero-vision).
"""

from __future__ import annotations

from training.data import ChatLoader, gsm8k_conversation, gsm8k_path, read_jsonl
from training.engine import Engine
from training.program import program_args
from training.reporting import fail


def sft_sources(spec, data_root: str) -> dict[str, list[list[dict]]]:
    """Conversations per source; read before the process group starts (bad input fails fast)."""
    examples = read_jsonl(gsm8k_path(data_root, "train"))
    sources = {"chat": [gsm8k_conversation(ex, spec.sft.answer_style) for ex in examples]}
    ref = spec.inputs.tool_data
    if ref is not None:
        from agents.sft_data import read_tool_data
        from infra.refs import MissingReference

        try:
            ref.verify()
            _, rows = read_tool_data(ref.uri)
        except (MissingReference, ValueError) as e:
            fail(f"sft tool data: {e}")
        sources["tool"] = [r["messages"] for r in rows if r["source"] == "image"]
        sources["pot"] = [r["messages"] for r in rows if r["source"] == "pot"]
        sources["search"] = [r["messages"] for r in rows if r["source"] == "search"]
    return sources


def main(argv: list[str] | None = None) -> None:
    spec, run = program_args(("sft",), argv)
    sources = sft_sources(spec, run.data_root)
    engine = Engine(spec, run)
    cfg = engine.spec
    loader = ChatLoader(sources, engine.vocab, cfg.data.seq_len, cfg.data.batch_size, cfg.train.seed,
                        engine.rank, engine.world, shares=cfg.sft.shares())
    engine.reporter.log(f"sft sources: {', '.join(f'{n}={len(r)} ({loader.shares[n]:.0%})' for n, r in loader.sources.items())}; "
                        f"too long for a {cfg.data.seq_len}-token row: {sum(map(len, loader.too_long.values()))}")
    device = engine.device

    def step_fn(step: int):
        b = loader.batch(step)
        loss = engine.model.loss(b.tokens.to(device), b.targets.to(device), None, b.attn_mask.to(device))
        return loss, {"answer_tokens": float((b.targets != -100).sum())}, b.text_tokens

    engine.fit(step_fn, loader.state_dict)


if __name__ == "__main__":
    main()
