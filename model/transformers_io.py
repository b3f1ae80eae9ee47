"""Our backbone as a transformers `DeepseekV3ForCausalLM`, and back.

The names are DeepSeek-V3's (what transformers, vLLM and SGLang load), so an exported checkpoint
runs in any of them and a DeepseekV3 folder can be read as our model. Parity: the same weights
give the same logits (tests/integration/test_transformers_io.py, and the backbone parity tests
that first used this mapping).

    python -m model.transformers_io export --checkpoint <checkpoint uri> --mixture <mixture.json uri> --out <folder>

An export holds config.json and model.safetensors (`save_pretrained`), the tokenizer
(tokenizer.json with its special tokens) and, in tokenizer_config.json, the K2.5 chat template
(Jinja, the form `agents.chat.render` produces), plus `k25_vision.safetensors` with the vision
tower and projector (transformers' DeepseekV3 is text-only; our loader reads it back). What the
DeepSeek-V3 format cannot carry: the media placeholder id and, without YaRN, the context YaRN
would later extend from (both kept in `k25.json`).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from model.backbone import Backbone, MoE
from model.config import ModelConfig


def deepseek_config(cfg: ModelConfig):
    """The DeepseekV3Config with our dimensions. transformers' DeepseekV3 always routes with
    sigmoid scores and the e_score_correction_bias (scoring_func sigmoid, topk_method noaux_tc);
    n_group = topk_group = 1 turns group-limited routing off, as in K2."""
    from transformers import DeepseekV3Config

    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.yarn_factor > 1:
        rope = {"rope_type": "yarn", "rope_theta": cfg.rope_theta, "factor": cfg.yarn_factor,
                "original_max_position_embeddings": cfg.original_max_position,
                "beta_fast": cfg.yarn_beta_fast, "beta_slow": cfg.yarn_beta_slow,
                "mscale": cfg.yarn_mscale, "mscale_all_dim": cfg.yarn_mscale_all_dim}
    return DeepseekV3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
        moe_intermediate_size=cfg.expert_dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
        n_shared_experts=cfg.n_shared_experts, n_routed_experts=cfg.n_experts,
        num_experts_per_tok=cfg.top_k, routed_scaling_factor=cfg.routed_scaling, n_group=1, topk_group=1,
        norm_topk_prob=True, first_k_dense_replace=cfg.n_dense_layers,
        q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim,
        max_position_embeddings=max(cfg.max_seq_len, cfg.original_max_position), rms_norm_eps=cfg.norm_eps,
        rope_parameters=rope, rope_interleave=True, tie_word_embeddings=False, attention_bias=False,
        hidden_act="silu", num_nextn_predict_layers=0,
    )


def model_config_from(hf, vision: dict | None = None) -> ModelConfig:
    """Our ModelConfig from a DeepseekV3Config (the inverse of `deepseek_config`)."""
    if getattr(hf, "n_group", 1) != 1 or getattr(hf, "topk_group", 1) != 1:
        raise ValueError(f"group-limited routing (n_group={hf.n_group}, topk_group={hf.topk_group}) is not supported")
    if getattr(hf, "q_lora_rank", None) is None:
        raise ValueError("a DeepseekV3 config without q_lora_rank (full-rank queries) is not supported")
    rope = dict(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {})
    theta = rope.get("rope_theta", getattr(hf, "rope_theta", 10_000.0))
    yarn = rope.get("rope_type", rope.get("type")) == "yarn"
    d = dict(vocab_size=hf.vocab_size, dim=hf.hidden_size, n_layers=hf.num_hidden_layers, n_heads=hf.num_attention_heads,
             q_lora_rank=hf.q_lora_rank, kv_lora_rank=hf.kv_lora_rank, qk_nope_head_dim=hf.qk_nope_head_dim,
             qk_rope_head_dim=hf.qk_rope_head_dim, v_head_dim=hf.v_head_dim, n_dense_layers=hf.first_k_dense_replace,
             ffn_dim=hf.intermediate_size, n_experts=hf.n_routed_experts, top_k=hf.num_experts_per_tok,
             n_shared_experts=hf.n_shared_experts, expert_dim=hf.moe_intermediate_size,
             routed_scaling=hf.routed_scaling_factor, rope_theta=theta, max_seq_len=hf.max_position_embeddings,
             norm_eps=hf.rms_norm_eps)
    if yarn:
        d.update(yarn_factor=rope["factor"], original_max_position=rope["original_max_position_embeddings"],
                 yarn_beta_fast=rope.get("beta_fast", 32.0), yarn_beta_slow=rope.get("beta_slow", 1.0),
                 yarn_mscale=rope.get("mscale", 1.0), yarn_mscale_all_dim=rope.get("mscale_all_dim", 1.0))
    else:
        d["original_max_position"] = hf.max_position_embeddings
    return ModelConfig.from_dict({**d, **({"vision": vision} if vision else {})})


def _pairs(ours: Backbone):
    """(our parameter, DeepseekV3 name) for every non-expert tensor of the backbone."""
    yield ours.embed.weight, "model.embed_tokens.weight"
    yield ours.norm.weight, "model.norm.weight"
    yield ours.head.weight, "lm_head.weight"
    for i, layer in enumerate(ours.layers):
        p = f"model.layers.{i}."
        yield layer.attn_norm.weight, p + "input_layernorm.weight"
        yield layer.ffn_norm.weight, p + "post_attention_layernorm.weight"
        for name in ("q_a_proj", "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj"):
            yield getattr(layer.attn, name).weight, p + f"self_attn.{name}.weight"
        ffn = layer.ffn
        mlp = p + "mlp." if not isinstance(ffn, MoE) else p + "mlp.shared_experts."
        dense = ffn if not isinstance(ffn, MoE) else ffn.shared
        for ours_name, name in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            yield getattr(dense, ours_name).weight, mlp + f"{name}.weight"
        if isinstance(ffn, MoE):
            yield ffn.router.weight, p + "mlp.gate.weight"
            yield ffn.expert_bias, p + "mlp.gate.e_score_correction_bias"


def deepseek_state_dict(ours: Backbone, expert_keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Our weights under DeepseekV3ForCausalLM names. Our experts are stacked [E, in, out] (w_gate,
    w_up, w_down); transformers >= 5 stacks them as gate_up_proj [E, 2*out, in] and down_proj
    [E, dim, expert_dim]; per-expert Linears ([out, in], the released checkpoints' and older
    transformers' layout) are written when `expert_keys` names them."""
    sd = {name: t for t, name in _pairs(ours)}
    for i, layer in enumerate(ours.layers):
        ffn, p = layer.ffn, f"model.layers.{i}.mlp.experts."
        if not isinstance(ffn, MoE):
            continue
        if expert_keys is None or p + "gate_up_proj" in expert_keys:
            sd[p + "gate_up_proj"] = torch.cat([ffn.w_gate.mT, ffn.w_up.mT], dim=1)
            sd[p + "down_proj"] = ffn.w_down.mT
        else:
            for e in range(ffn.n_experts):
                sd[p + f"{e}.gate_proj.weight"] = ffn.w_gate[e].T
                sd[p + f"{e}.up_proj.weight"] = ffn.w_up[e].T
                sd[p + f"{e}.down_proj.weight"] = ffn.w_down[e].T
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


@torch.no_grad()
def load_deepseek_state_dict(ours: Backbone, sd: dict[str, torch.Tensor]) -> None:
    """Fill our backbone from DeepseekV3 names (stacked or per-expert layout); every tensor of
    ours must be found, with its shape."""
    missing = []

    def take(name: str) -> torch.Tensor | None:
        if name not in sd:
            missing.append(name)
            return None
        return sd[name]

    for t, name in _pairs(ours):
        src = take(name)
        if src is not None:
            t.copy_(src.reshape(t.shape) if src.numel() == t.numel() else src)
    for i, layer in enumerate(ours.layers):
        ffn, p = layer.ffn, f"model.layers.{i}.mlp.experts."
        if not isinstance(ffn, MoE):
            continue
        if p + "gate_up_proj" in sd:
            gate_up, down = sd[p + "gate_up_proj"], take(p + "down_proj")
            ffn.w_gate.copy_(gate_up[:, : ffn.w_gate.shape[2]].mT)
            ffn.w_up.copy_(gate_up[:, ffn.w_gate.shape[2]:].mT)
            if down is not None:
                ffn.w_down.copy_(down.mT)
            continue
        for e in range(ffn.n_experts):
            for w, name in ((ffn.w_gate, "gate_proj"), (ffn.w_up, "up_proj"), (ffn.w_down, "down_proj")):
                src = take(p + f"{e}.{name}.weight")
                if src is not None:
                    w[e].copy_(src.T)
    if missing:
        raise ValueError(f"the DeepseekV3 weights lack {len(missing)} tensors, e.g. {missing[:3]}")


def to_transformers(ours: Backbone):
    """transformers' DeepseekV3ForCausalLM with our config and a copy of our weights."""
    from transformers import DeepseekV3ForCausalLM

    theirs = DeepseekV3ForCausalLM(deepseek_config(ours.cfg)).to(ours.head.weight.dtype)
    theirs.load_state_dict(deepseek_state_dict(ours, set(theirs.state_dict())), strict=True)
    return theirs.train(ours.training)


def export_folder(model, vocab, out: str) -> str:
    """Write `model` (a K25Model) and its tokenizer as a transformers folder (module docstring)."""
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast

    from agents.chat import CHAT_TEMPLATE_JINJA

    os.makedirs(out, exist_ok=True)
    to_transformers(model.backbone).save_pretrained(out)
    tok = PreTrainedTokenizerFast(tokenizer_object=vocab.tok, eos_token="[EOS]", pad_token="[PAD]",
                                  bos_token="[BOS]")
    tok.chat_template = CHAT_TEMPLATE_JINJA
    tok.save_pretrained(out)
    vision = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    save_file(vision, os.path.join(out, "k25_vision.safetensors"))
    with open(os.path.join(out, "k25.json"), "w") as f:
        json.dump({"media_pad_id": model.media_pad_id, "vision": model.cfg.to_dict()["vision"],
                   "original_max_position": model.cfg.original_max_position}, f, indent=1)
    return out


def import_folder(path: str, device="cpu"):
    """A K25Model from a transformers DeepseekV3 folder (ours or anyone's): the backbone from its
    safetensors, the vision tower from `k25_vision.safetensors` when there is one (else fresh)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from model.multimodal import K25Model

    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{path}: no config.json (not a transformers model folder)")
    with open(config_file) as f:
        model_type = json.load(f).get("model_type")
    if model_type != "deepseek_v3":
        raise ValueError(f"{path}: model_type {model_type!r}, expected 'deepseek_v3' (DeepseekV3ForCausalLM)")
    hf = AutoConfig.from_pretrained(path)
    extra = {}
    if os.path.exists(os.path.join(path, "k25.json")):
        with open(os.path.join(path, "k25.json")) as f:
            extra = json.load(f)
    cfg = model_config_from(hf, extra.get("vision"))
    if cfg.yarn_factor == 1 and "original_max_position" in extra:  # what YaRN would later extend from
        cfg.original_max_position = int(extra["original_max_position"])
    model = K25Model(cfg, media_pad_id=extra.get("media_pad_id", 0))
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors") and f != "k25_vision.safetensors")
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    sd = {}
    for name in files:
        sd.update(load_file(os.path.join(path, name)))
    load_deepseek_state_dict(model.backbone, sd)
    vision_file = os.path.join(path, "k25_vision.safetensors")
    if os.path.exists(vision_file):
        model.load_state_dict(load_file(vision_file), strict=False)
    return model.to(device)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Export a K2.5 checkpoint as a transformers DeepseekV3 folder")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export")
    e.add_argument("--checkpoint", required=True, help="checkpoint URI")
    e.add_argument("--mixture", required=True, help="mixture.json URI (for the tokenizer)")
    e.add_argument("--out", required=True, help="the folder to write")
    args = p.parse_args(argv)
    from infra.refs import CheckpointRef, MixtureRef
    from training import checkpoint
    from training.data import load_vocab

    ref = CheckpointRef.at(args.checkpoint)
    model = checkpoint.load_model(ref, "cpu")
    print(export_folder(model, load_vocab(MixtureRef.at(args.mixture).verify()), args.out))


if __name__ == "__main__":
    main()
