"""``preftune label serve | export | stats``: collect human preferences on the 8-point A/B scale."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_jsonl
from ..config import LabelExportConfig, LabelServeConfig, LabelStatsConfig
from ..label.access import annotator_tokens
from ..label.store import Store, read_tasks, stats, to_comparison


def serve(cfg: LabelServeConfig) -> None:
    import uvicorn

    from ..label.app import create_app

    tokens = annotator_tokens(cfg.host, cfg.annotators)
    store = Store(cfg.db)
    if cfg.tasks:
        added = store.add_tasks(read_tasks(cfg.tasks))
        print(f"{cfg.db}: {added} tasks loaded" if added else f"{cfg.db}: already holds {store.n_tasks()} tasks; {cfg.tasks} not reloaded")
    elif not store.n_tasks():
        raise ValueError(f"{cfg.db} holds no tasks: pass --tasks")
    print(f"labelling at http://{cfg.host}:{cfg.port}/?annotator=NAME")
    uvicorn.run(create_app(store, tokens), host=cfg.host, port=cfg.port, log_level="warning")


def export(cfg: LabelExportConfig) -> int:
    """Answered labels as comparison rows (skipped tasks left out). Rows are data: prompts,
    completions and comments go out verbatim as JSON strings, a ``<script>`` neither escaped nor
    stripped, so training sees the text as it was; whatever shows them as HTML must escape them."""
    if not Path(cfg.db).exists():
        raise FileNotFoundError(f"{cfg.db}: no such database")
    labels = Store(cfg.db).labels()
    rows = [c for c in map(to_comparison, labels) if c is not None]
    write_jsonl(cfg.out, rows)
    print(f"wrote {len(rows)} comparisons to {cfg.out} ({len(labels) - len(rows)} skipped tasks left out)")
    return len(rows)


def show_stats(cfg: LabelStatsConfig) -> dict:
    if not Path(cfg.db).exists():
        raise FileNotFoundError(f"{cfg.db}: no such database")
    s = stats(Store(cfg.db).labels())
    if cfg.json:
        print(json.dumps(s))
    else:
        for k, v in s.items():
            print(f"{k:<22} {v:.3f}" if isinstance(v, float) else f"{k:<22} {v}")
    return s
