"""Export to and import from transformers' DeepseekV3 folders (model/transformers_io.py): a tiny
checkpoint exported, loaded with `transformers` itself, gives our logits; the folder read back
is our model; the chat template in it tokenizes as our renderer does."""

import json

import pytest
import torch

from model.config import model_preset
from model.multimodal import K25Model
from model.transformers_io import export_folder, import_folder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny):
    _, vocab = tiny
    torch.manual_seed(0)
    model = K25Model(model_preset("tiny", vocab_size=vocab.size), media_pad_id=vocab.media_pad).eval()
    with torch.no_grad():  # a non-zero expert bias, so that the routing bias is carried too
        for moe in model.backbone.moe_layers():
            moe.expert_bias.copy_(torch.linspace(-0.05, 0.05, moe.expert_bias.numel()))
    out = export_folder(model, vocab, str(tmp_path_factory.mktemp("export") / "k25-tiny"))
    return model, vocab, out


def test_transformers_loads_the_export_and_gives_our_logits(exported):
    from transformers import AutoModelForCausalLM

    model, vocab, out = exported
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(theirs).__name__ == "DeepseekV3ForCausalLM"
    ids = torch.tensor([vocab.encode("The quick brown fox jumps over the lazy dog. " * 4)])
    with torch.no_grad():
        ours = model(ids).float()
        got = theirs(ids).logits.float()
    assert torch.allclose(ours, got, atol=1e-5, rtol=0), (ours - got).abs().max()


def test_the_folder_reads_back_as_our_model(exported):
    model, vocab, out = exported
    back = import_folder(out).eval()
    assert back.cfg.to_dict() == model.cfg.to_dict() and back.media_pad_id == model.media_pad_id
    for (k, a), (k2, b) in zip(sorted(model.state_dict().items()), sorted(back.state_dict().items())):
        assert k == k2 and torch.equal(a, b), k
    (json_path := __import__("pathlib").Path(out) / "config.json")
    assert json.loads(json_path.read_text())["model_type"] == "deepseek_v3"


def test_an_unsupported_folder_is_refused_with_the_reason(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ValueError, match="deepseek_v3"):
        import_folder(str(tmp_path))


def test_the_exported_chat_template_tokenizes_as_our_renderer(exported):
    from transformers import AutoTokenizer

    from agents.chat import render

    _, vocab, out = exported
    tok = AutoTokenizer.from_pretrained(out)
    conversations = [
        [{"role": "user", "content": "What is 2 + 3?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Blue.", "reasoning": "any colour will do"},
         {"role": "user", "content": "Another, please"}],
        [{"role": "user", "content": "Search for Peru."},
         {"role": "assistant", "content": "", "tool_calls": [{"name": "search", "arguments": {"queries": ["Peru"]}},
                                                             {"name": "open", "arguments": {"doc_id": "c:peru"}}]},
         {"role": "tool", "name": "search", "call_index": 0, "content": "1. Peru (c:peru)"},
         {"role": "tool", "name": "open", "call_index": 1, "content": "Peru is a country. Its capital is Lima."}],
    ]
    for messages in conversations:
        ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert list(ids) == render(messages, vocab, add_generation_prompt=True), messages
