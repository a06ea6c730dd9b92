"""``preftune iterate``: rounds of sample → label (simulated, or people in the web app) → reward
model → policy, each from the last round's policy (:mod:`preftune.iterate`)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from .. import __version__
from ..atomic import write_atomic, write_jsonl
from ..config import IterateConfig, save_config
from ..iterate import check, evaluate_round, load_settings, run_round
from ..label.access import annotator_tokens
from ..label.store import Store, a_won, to_comparison
from ..stages import digest
from .common import hold_directory


class WebLabels:
    """A round's pairs served through the labelling app until ``--per-round`` labels are in (or
    ``--wait`` seconds pass); the store (``round-N/labels.sqlite``) keeps every answer, so a
    restarted loop starts from those it has."""

    def __init__(self, cfg: IterateConfig):
        self.cfg = cfg
        self.tokens = annotator_tokens(cfg.host, cfg.annotators)

    def __call__(self, here: Path, tasks: list[dict], r: int) -> Path:
        out, stamp, pairs = here / "labels.jsonl", here / "labels.sqlite.pairs", digest([str(here / "pairs.jsonl")])
        if stamp.exists() and stamp.read_text() != pairs:  # people's answers are never thrown away silently
            raise ValueError(
                f"{here / 'labels.sqlite'} holds labels of other pairs than {here / 'pairs.jsonl'} now; move it away to label these"
            )
        if out.exists():  # exported: this round's labelling is over
            return out
        write_atomic(stamp, pairs)
        store = Store(here / "labels.sqlite")
        sources = [json.dumps({"round": r, "a_ended": t["a_ended"], "b_ended": t["b_ended"]}) for t in tasks]
        store.add_tasks([(t["prompt"], t["a"], t["b"], s) for t, s in zip(tasks, sources)])
        need = min(self.cfg.per_round, store.n_tasks())
        if store.n_answered() < need:
            self._serve(store, need, r)
        rows = []
        for label in store.labels():
            row = to_comparison(label)
            if row is not None:
                ended = json.loads(label["source"])
                first, second = ("a_ended", "b_ended") if a_won(label) else ("b_ended", "a_ended")
                row.update(chosen_ended=ended[first], rejected_ended=ended[second], round=r)
                rows.append(row)
        if not rows:
            raise ValueError(f"round {r}: no labels in {here / 'labels.sqlite'} after {self.cfg.wait:g} s; run again to wait longer")
        write_jsonl(out, rows)
        return out

    def _serve(self, store: Store, need: int, r: int) -> None:
        import uvicorn

        from ..label.app import create_app

        server = uvicorn.Server(uvicorn.Config(create_app(store, self.tokens), host=self.cfg.host, port=self.cfg.port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        t0, shown = time.monotonic(), -1
        try:
            while not server.started and thread.is_alive():
                time.sleep(0.05)
            if not thread.is_alive():
                raise ValueError(f"round {r}: could not serve on {self.cfg.host}:{self.cfg.port} (in use?)")
            print(f"round {r}: label {need} pairs at http://{self.cfg.host}:{self.cfg.port}/?annotator=NAME", flush=True)
            while (done := store.n_answered()) < need:
                if done != shown:
                    print(f"round {r}: {done}/{need} labels", flush=True)
                    shown = done
                if self.cfg.wait and time.monotonic() - t0 > self.cfg.wait:
                    print(f"round {r}: --wait {self.cfg.wait:g} s is up with {done}/{need} labels; training on those")
                    break
                time.sleep(0.2)
        finally:
            server.should_exit = True
            thread.join()
        print(f"round {r}: {store.n_answered()} labels in", flush=True)


def iterate(cfg: IterateConfig) -> list[dict]:
    settings = load_settings(cfg.settings)
    check(cfg)
    label = WebLabels(cfg) if cfg.labels == "web" else None
    out = Path(cfg.out)
    with hold_directory(out, "iterate", "--out"):
        save_config(cfg, out / "run_config.json", command="iterate", preftune=__version__)  # `--config` replays it
        rows: list[dict] = []
        for r in range(1, cfg.rounds + 1):
            print(f"\n=== round {r} of {cfg.rounds} ===", flush=True)
            dirs = [str(out / f"round-{i}") for i in range(1, r + 1)]
            row = run_round(cfg, settings, dirs, label)
            if cfg.eval_prompts:
                row["policy"] = evaluate_round(cfg, settings, Path(dirs[-1]))
            rows.append(row)
            write_jsonl(out / "rounds.jsonl", rows)
            print(_line(row), flush=True)
    print(f"\nwrote {len(rows)} rounds to {out}: round-N/rm, round-N/policy, rounds.jsonl")
    return rows


def _line(row: dict) -> str:
    rm, pol = row["rm"], row.get("policy", {})
    parts = [f"round {row['round']}: {row['labels']} labels, reward model on {row['trained_on']}"]
    if "gold_pair_accuracy" in rm:
        parts.append(f"its gold pair accuracy {rm['gold_pair_accuracy']:.3f}")
    if "gold" in pol:
        parts.append(f"policy gold {pol['gold']:+.3f} ± {pol['gold_ci95']:.3f}, KL to pi_SFT {pol['kl']:.2f}")
    return "; ".join(parts)
