"""HF safetensors directories: tiny random transformers models ↔ lmstack models, both directions."""

import json

import pytest
import torch

from lmstack.errors import WeightsError
from lmstack.models import DecoderLM, EncoderModel, model_config
from lmstack.weights.hf import INDEX_FILE, load_hf, read_safetensors_dir, save_hf

transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=101, max_position_embeddings=64)


def hf_models():
    t = transformers
    return {
        "gpt2": lambda: t.GPT2LMHeadModel(t.GPT2Config(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
        "gpt2-untied": lambda: t.GPT2LMHeadModel(
            t.GPT2Config(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=64, tie_word_embeddings=False)
        ),
        "llama": lambda: t.LlamaForCausalLM(
            t.LlamaConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=48,
                rope_theta=500.0,
                **SHAPE,
            )
        ),
        "llama-tied": lambda: t.LlamaForCausalLM(
            t.LlamaConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=4,
                intermediate_size=48,
                tie_word_embeddings=True,
                **SHAPE,
            )
        ),
        "bert": lambda: t.BertModel(
            t.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, **SHAPE)
        ),
        "bert-mlm": lambda: t.BertForMaskedLM(
            t.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, **SHAPE)
        ),
    }


def outputs(model, ids, mask):
    """Comparable outputs of either side: decoder logits, or encoder states / MLM logits with padding zeroed."""
    with torch.no_grad():
        if isinstance(model, DecoderLM):
            return model(ids)
        if isinstance(model, EncoderModel):
            h = model(ids, attention_mask=mask)
            return (model.mlm_logits(h) if model.mlm_head is not None else h) * mask[..., None]
        if model.config.model_type != "bert":
            return model(ids).logits
        out = model(ids, attention_mask=mask)
        return (out.logits if hasattr(out, "logits") else out.last_hidden_state) * mask[..., None]


@pytest.fixture
def batch():
    ids = torch.randint(0, 101, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    return ids, mask


@pytest.mark.parametrize("name", list(hf_models()))
def test_load_matches_transformers(tmp_path, batch, name):
    hf = hf_models()[name]().eval()
    hf.save_pretrained(tmp_path)
    ours, tokenizer = load_hf(tmp_path)
    assert tokenizer is None
    assert not ours.training
    diff = (outputs(ours, *batch) - outputs(hf, *batch)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("name", list(hf_models()))
def test_save_loads_in_transformers(tmp_path, batch, name):
    hf = hf_models()[name]().eval()
    hf.save_pretrained(tmp_path / "src")
    ours, _ = load_hf(tmp_path / "src")
    save_hf(ours, tmp_path / "out")
    reloaded = type(hf).from_pretrained(tmp_path / "out").eval()
    assert torch.equal(outputs(reloaded, *batch), outputs(hf, *batch))


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt-tiny"])
def test_our_decoder_round_trips_through_transformers(tmp_path, tiny_tokenizer, preset):
    model = DecoderLM(
        model_config(
            preset, vocab_size=tiny_tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64
        )
    ).eval()
    save_hf(model, tmp_path / "hf", tokenizer=tiny_tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "def add(a, b): return the quick fox"
    assert hf_tok.encode(text, add_special_tokens=False) == tiny_tokenizer.encode(text)
    ids = torch.tensor([tiny_tokenizer.encode(text)])
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() <= 1e-5
    back, tok = load_hf(tmp_path / "hf")
    assert tok.encode(text) == tiny_tokenizer.encode(text)
    with torch.no_grad():
        assert torch.equal(back(ids), model(ids))


def test_sharded_save_and_load(tmp_path):
    model = DecoderLM(
        model_config("llama-tiny", vocab_size=101, d_model=32, n_layers=3, n_heads=4, d_ff=64, max_seq_len=64)
    ).eval()
    save_hf(model, tmp_path / "sharded", max_shard_bytes=30_000)
    index = json.loads((tmp_path / "sharded" / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    back, _ = load_hf(tmp_path / "sharded")
    ids = torch.randint(0, 101, (1, 10))
    with torch.no_grad():
        assert torch.equal(back(ids), model(ids))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded").eval()
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() <= 1e-5
    # saving over an existing directory replaces it completely
    save_hf(model, tmp_path / "sharded")
    assert not (tmp_path / "sharded" / INDEX_FILE).exists()
    assert len(read_safetensors_dir(tmp_path / "sharded")) == len(index["weight_map"])


def test_saved_config_names_the_weights_dtype(tmp_path):
    model = DecoderLM(
        model_config("llama-tiny", vocab_size=101, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)
    ).eval()
    save_hf(model, tmp_path / "fp32")
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["torch_dtype"] == "float32"
    save_hf(model.to(torch.bfloat16), tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", torch_dtype="auto")
    assert hf.dtype == torch.bfloat16


def test_bad_directories_raise(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="no such directory"):
        load_hf(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="config.json"):
        load_hf(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(WeightsError, match="model_type 'mamba'"):
        load_hf(tmp_path / "empty")
    hf = hf_models()["llama"]()
    hf.save_pretrained(tmp_path / "partial")
    sd = read_safetensors_dir(tmp_path / "partial")
    del sd["model.layers.1.mlp.up_proj.weight"]
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "partial" / "model.safetensors"))
    with pytest.raises(WeightsError, match="model.layers.1.mlp.up_proj.weight"):
        load_hf(tmp_path / "partial")
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(48, 32)
    sd["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "partial" / "model.safetensors"))
    with pytest.raises(WeightsError, match="cannot place"):
        load_hf(tmp_path / "partial")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="fetching it from the HF hub failed"):
        load_hf("no-such-org/no-such-model")


def test_unsupported_model_cannot_be_saved(tmp_path):
    from lmstack.models import Seq2SeqLM

    model = Seq2SeqLM(model_config("t5-tiny", vocab_size=101, d_model=32, n_layers=1, n_heads=4, d_ff=64))
    with pytest.raises(WeightsError, match="no HF layout"):
        save_hf(model, tmp_path / "t5")
    assert not (tmp_path / "t5").exists()
