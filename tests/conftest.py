import copy
import os
import tempfile

import pytest
import torch

from preftune.models import build_model, train_tokenizer
from preftune.world import lists

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("PREFTUNE_THREADS", "2")
os.environ["PREFTUNE_CACHE"] = tempfile.mkdtemp(prefix="preftune-test-cache-")  # never the user's ~/.cache


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """Each test its own content-keyed cache (module fixtures run before this and use the session's)."""
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tokenizer():
    texts = [r["text"] for r in lists.corpus(400, seed=0)] + [r["prompt"] + r["completion"] for r in lists.sft_data(200, seed=0)]
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="session")
def bos_tokenizer(tokenizer):
    """The tokenizer with a BOS that it puts before every text (as Llama's does) and its own chat template."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"bos_token": "<s>"})
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tok


@pytest.fixture()
def model(tokenizer):
    return build_model(tokenizer, size="micro", seed=0).eval()


@pytest.fixture(scope="session")
def saved_policy(tmp_path_factory, tokenizer) -> str:
    """A micro policy saved as the commands load one (``--model``); read, never written, by the tests."""
    from preftune.models import save_model

    path = tmp_path_factory.mktemp("policy") / "model"
    save_model(build_model(tokenizer, size="micro", seed=0), tokenizer, path)
    return str(path)


@pytest.fixture(scope="session")
def world_rows():
    return lists.sft_data(64, seed=1)


@pytest.fixture()
def gpt2_with_dropout(tmp_path, tokenizer):
    """A saved micro GPT-2 with GPT-2's default dropout (0.1 on embeddings, attention and residuals)."""
    from transformers import AutoModelForCausalLM, GPT2Config

    from preftune.models import save_model

    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=128, **ids)
    assert config.resid_pdrop == config.attn_pdrop == config.embd_pdrop == 0.1
    torch.manual_seed(0)
    save_model(AutoModelForCausalLM.from_config(config), tokenizer, tmp_path / "gpt2")
    return tmp_path / "gpt2"
