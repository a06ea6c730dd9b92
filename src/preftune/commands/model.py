"""``preftune import``: a pretrained model from a GGUF file into a directory every command loads."""

from __future__ import annotations

from ..config import ImportConfig
from ..models import import_gguf, n_params


def import_model(cfg: ImportConfig) -> None:
    print(f"reading {cfg.file} (dequantizing to fp32) ...", flush=True)
    model, tokenizer = import_gguf(cfg.file, cfg.out)
    print(
        f"wrote {cfg.out}: {type(model).__name__}, {n_params(model) / 1e6:.1f}M parameters, vocabulary {len(tokenizer)},"
        f" eos {tokenizer.eos_token!r}, pad {tokenizer.pad_token!r}, chat template: {'yes' if tokenizer.chat_template else 'no'}"
    )
