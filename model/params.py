"""Parameter accounting: total, activated per token, vision encoder and projector."""

from __future__ import annotations

import torch

from model.config import ModelConfig, model_preset
from model.multimodal import K25Model


def build_on_meta(cfg: ModelConfig, media_pad_id: int = 0) -> K25Model:
    """The model with shapes only (no memory), e.g. the 1T-parameter `k25` preset on a laptop."""
    with torch.device("meta"):
        return K25Model(cfg, media_pad_id=media_pad_id)


def parameter_counts(model: K25Model) -> dict[str, int]:
    """LLM total and activated (routed experts count top_k/n_experts of their weights), ViT
    without the projector, and the projector."""
    cfg = model.cfg
    llm_total = sum(p.numel() for p in model.backbone.parameters())
    routed = sum(m.w_gate.numel() + m.w_up.numel() + m.w_down.numel() for m in model.backbone.moe_layers())
    inactive = routed * (cfg.n_experts - cfg.top_k) // cfg.n_experts
    projector = sum(p.numel() for p in model.vision.projector.parameters())
    vit = sum(p.numel() for p in model.vision.parameters()) - projector
    return {"llm_total": llm_total, "llm_activated": llm_total - inactive, "vit": vit, "projector": projector,
            "total": llm_total + vit + projector}


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="print parameter counts of a preset (built on the meta device)")
    p.add_argument("preset", nargs="?", default="k25")
    counts = parameter_counts(build_on_meta(model_preset(p.parse_args().preset)))
    for k, v in counts.items():
        print(f"{k:14s} {v:>17,d}  ({v / 1e9:.3f} B)")


if __name__ == "__main__":
    main()
