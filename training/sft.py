"""Zero-vision SFT: text-only chat data, loss on the assistant turn only (RECIPE.md §5).

    torchrun --nproc-per-node 2 -m training.sft --spec <run dir>/spec.json
    torchrun --nproc-per-node 2 -m training.sft --profile tiny --mixture <mixture.json> \
        --run-dir <uri> --init-from <midtrain checkpoint>

The tiny profile's conversations are GSM8K train problems with their worked solutions; the
vision encoder is not trained here (zero-vision), which the stage config's `trainable` enforces
by default only through the data: no media tokens reach the model.
"""

from __future__ import annotations

from training.data import ChatLoader, gsm8k_conversation, gsm8k_path, read_jsonl
from training.engine import Engine
from training.program import program_args


def main(argv: list[str] | None = None) -> None:
    spec, run = program_args(("sft",), argv)
    examples = read_jsonl(gsm8k_path(run.data_root, "train"))  # fails before the process group starts
    engine = Engine(spec, run)
    cfg = engine.spec
    conversations = [gsm8k_conversation(ex, cfg.sft.answer_style) for ex in examples]
    loader = ChatLoader(conversations, engine.vocab, cfg.data.seq_len, cfg.data.batch_size, cfg.train.seed,
                        engine.rank, engine.world)
    device = engine.device

    def step_fn(step: int):
        b = loader.batch(step)
        loss = engine.model.loss(b.tokens.to(device), b.targets.to(device), None, b.attn_mask.to(device))
        return loss, {"answer_tokens": float((b.targets != -100).sum())}, b.text_tokens

    engine.fit(step_fn, loader.state_dict)


if __name__ == "__main__":
    main()
