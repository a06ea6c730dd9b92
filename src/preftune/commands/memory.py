"""``preftune memory``: each trainer's memory per process for a model's shape (:mod:`preftune.memory`)."""

from __future__ import annotations

import json

from ..config import MemoryConfig
from ..memory import TRAINERS, estimate, load_shape, table


def memory(cfg: MemoryConfig) -> dict:
    shape = load_shape(cfg.model)
    kw = dict(
        precision=cfg.precision,
        processes=cfg.processes,
        fsdp=cfg.fsdp,
        gradient_checkpointing=cfg.gradient_checkpointing,
        frozen_bf16=cfg.frozen_bf16,
        flash_attention=cfg.flash_attention,
    )
    result = {t: estimate(shape, t, cfg.batch_size, cfg.seq_len, **kw) for t in TRAINERS}
    if cfg.json:
        print(json.dumps({"params": shape.params, **result}))
    else:
        print(f"{cfg.model}: {shape.params / 1e6:,.1f}M parameters; GiB per process, batch {cfg.batch_size} × {cfg.seq_len} tokens")
        print(table(result))
    return result
