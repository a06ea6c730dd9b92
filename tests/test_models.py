import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune.models import add_lora, build_model, save_model


def _greedy(model, tok, prompt):
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1] :]


def test_tokenizer_has_distinct_eos_and_pad(tokenizer):
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    assert tokenizer.decode(tokenizer(" apple, pear.")["input_ids"]) == " apple, pear."


def test_saved_model_loads_with_plain_transformers_and_generates(tmp_path, tokenizer):
    for arch in ("llama", "gpt2"):
        model = build_model(tokenizer, size="micro", arch=arch).eval()
        save_model(model, tokenizer, tmp_path / arch)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / arch).eval()
        tok = AutoTokenizer.from_pretrained(tmp_path / arch)
        assert tok.eos_token_id == tokenizer.eos_token_id and tok.chat_template == tokenizer.chat_template
        prompt = "Human: Name 2 fruits.\n\nAssistant:"
        new = _greedy(loaded, tok, prompt)
        assert len(new) >= 1
        assert torch.equal(new, _greedy(model, tokenizer, prompt))


def test_lora_model_saves_merged_weights_and_the_adapter(tmp_path, tokenizer):
    model = add_lora(build_model(tokenizer, size="micro"))
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = tokenizer("Human: Name 2 fruits.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    save_model(model, tokenizer, tmp_path / "m")
    assert (tmp_path / "m" / "adapter" / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_lora_adapters_are_initialised_from_the_seed(tokenizer):
    """A LoRA run is reproducible from its seed: the adapters' random A matrices come from it, not from
    whatever the process's RNG held (it did before: two `sft --lora` runs of one config differed)."""

    def adapters(seed, draws_before=0):
        base = build_model(tokenizer, size="micro")
        torch.rand(draws_before)  # the global RNG moved by anything that ran before
        model = add_lora(base, seed=seed)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    first, again, other = adapters(0), adapters(0, draws_before=7), adapters(1)
    assert first and first.keys() == again.keys()
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)


def test_a_save_that_dies_midway_leaves_no_config_json(tmp_path, tokenizer, monkeypatch):
    """config.json is moved in last: its presence means the whole model is there."""
    model = build_model(tokenizer, size="micro")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", boom)  # dies after the weights are written
    with pytest.raises(OSError, match="disk full"):
        save_model(model, tokenizer, tmp_path / "m")
    assert not (tmp_path / "m" / "config.json").exists()
    assert not (tmp_path / "m" / "model.safetensors").exists()  # nothing half-published
    monkeypatch.undo()
    save_model(model, tokenizer, tmp_path / "m")  # a retry completes and cleans up
    assert (tmp_path / "m" / "config.json").exists() and not (tmp_path / "m" / ".saving").exists()


def test_fused_gelu_is_gpt2s_gelu_new_and_leaves_the_saved_config_alone(tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.activations import GELUTanh, NewGELUActivation

    from preftune.models import fuse_gelu, load_policy, save_model

    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    torch.manual_seed(0)
    plain = GPT2LMHeadModel(config).eval()
    save_model(plain, tokenizer, tmp_path / "gpt2")
    fused, _ = load_policy(tmp_path / "gpt2")
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    assert sum(isinstance(m, GELUTanh) for m in fused.modules()) == 2  # one per block
    ids = torch.randint(0, len(tokenizer), (3, 20))
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    save_model(fused, tokenizer, tmp_path / "again")
    assert json.loads((tmp_path / "again/config.json").read_text())["activation_function"] == "gelu_new"
    assert fuse_gelu(plain) is plain


def test_import_reads_a_gguf_file_into_a_directory_every_command_loads(tmp_path, tokenizer, capsys):
    """A tiny Llama written as GGUF (llama.cpp's layout, F32; tests/gguf_tiny.py) comes back from
    ``preftune import`` as a plain directory: the same logits, tokenization, EOS and chat template,
    and no trace of the GGUF quantizer (which would refuse to save)."""
    pytest.importorskip("gguf")
    from gguf_tiny import write_gguf
    from preftune.cli import main
    from preftune.models import load_policy

    model = build_model(tokenizer, size="micro", arch="llama", seed=4).eval()
    file = write_gguf(model, tokenizer, tmp_path / "tiny.F32.gguf")
    assert main(["import", str(tmp_path), "--out", str(tmp_path / "imported")]) == 0  # the directory holding it
    assert "vocabulary 400" in capsys.readouterr().out
    loaded, tok = load_policy(tmp_path / "imported")
    ids = torch.tensor([tokenizer("Human: Name 2 fruits.\n\nAssistant: apple, pear.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)
    text = "Human: Name 3 birds.\n\nAssistant: owl, crow, swan."
    assert tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (tok.eos_token_id, tok.chat_template) == (tokenizer.eos_token_id, tokenizer.chat_template)
    assert "quantization_config" not in json.loads((tmp_path / "imported/config.json").read_text())
    # a GGUF file where a model directory belongs: an error that says what to do
    with pytest.raises(FileNotFoundError, match="preftune import"):
        load_policy(file)
    assert main(["import", str(tmp_path / "imported/config.json"), "--out", str(tmp_path / "x")]) == 2
    assert "no GGUF file" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "imported"), "--out", str(tmp_path / "x")]) == 2  # a directory without one
    assert "expected one .gguf file" in capsys.readouterr().err
