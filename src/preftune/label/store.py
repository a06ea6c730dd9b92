"""The labelling store: SQLite in WAL mode, every answer committed before it is acknowledged.

Each annotator sees each task at most once, in an order of their own (a permutation seeded by
their name), with the A/B sides randomised per (annotator, task) and recorded with the label.
The 8-point scale: 1 = A much better, 2 = A better, 3 = A slightly better, 4 = A negligibly
better, 5 = B negligibly better, ... 8 = B much better.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..data import SCALE_STRENGTHS, DataError, read_rows

SCALE = (
    "A much better",
    "A better",
    "A slightly better",
    "A negligibly better",
    "B negligibly better",
    "B slightly better",
    "B better",
    "B much better",
)
STRENGTH = {c: SCALE_STRENGTHS[min(c - 1, 8 - c)] for c in range(1, 9)}  # 1 and 8 -> 1.0, 4 and 5 -> 0.25

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, prompt TEXT NOT NULL, a TEXT NOT NULL, b TEXT NOT NULL, source TEXT);
CREATE TABLE IF NOT EXISTS labels (
    annotator TEXT NOT NULL,
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    a_shown_as TEXT NOT NULL CHECK (a_shown_as IN ('A', 'B')),  -- where response a was shown
    choice INTEGER CHECK (choice BETWEEN 1 AND 8),                -- NULL when skipped
    comment TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    PRIMARY KEY (annotator, task_id)
);
"""


def read_tasks(path: str | Path) -> list[tuple[str, str, str, str]]:
    """Tasks ``{"prompt", "a", "b"}`` or ``preftune sample`` output ``{"prompt", "completions": [a, b, ...]}``
    (the first two are compared). Returns (prompt, a, b, where) with file:line errors."""
    out = []
    for where, row in read_rows(path):
        prompt = row.get("prompt")
        comps = row.get("completions")
        pair = [row.get("a"), row.get("b")] if "a" in row or "b" in row else comps[:2] if isinstance(comps, list) else []
        if not isinstance(prompt, str) or not prompt:
            raise DataError(path, where, "missing or empty string field 'prompt'")
        if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise DataError(path, where, "expected string fields 'a' and 'b', or 'completions' with at least 2 strings")
        out.append((prompt, pair[0], pair[1], f"{path}:{where}"))
    if not out:
        raise DataError(path, 1, "the task file holds no rows")
    return out


def _seeded(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:8], "big"))


def _a_shown_as(annotator: str, task_id: int) -> str:
    """Where response a is shown to this annotator for this task: "A" (left) or "B", seeded."""
    return "A" if _seeded("side", annotator, task_id).random() < 0.5 else "B"


def a_won(label: dict) -> bool:
    """Whether a stored label prefers response a: the side it chose, mapped back through where a was shown."""
    return (label["choice"] <= 4) == (label["a_shown_as"] == "A")


@dataclass(frozen=True)
class Shown:
    task_id: int
    prompt: str
    left: str  # shown as "A"
    right: str  # shown as "B"
    a_shown_as: str
    index: int  # 1-based position in this annotator's order
    total: int


class Store:
    def __init__(self, path: str | Path):
        self.path = str(path)
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # One connection serves the server's worker threads; without this lock one thread's failed
        # BEGIN (a transaction is already open) rolls back another thread's acknowledged INSERT.
        self.lock = threading.RLock()
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")  # a committed answer survives a power cut, not only a crash
        self.conn.executescript(SCHEMA)

    def add_tasks(self, tasks: list[tuple[str, str, str, str]]) -> int:
        """Load tasks once; a database that already holds tasks keeps them (labels refer to them)."""
        with self.lock:
            if self.n_tasks():
                return 0
            with self.conn:
                self.conn.execute("BEGIN")
                self.conn.executemany("INSERT INTO tasks (prompt, a, b, source) VALUES (?, ?, ?, ?)", tasks)
        return len(tasks)

    def n_tasks(self) -> int:
        with self.lock:
            return self.conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]

    def n_answered(self) -> int:
        """Labels given (a skip is not one)."""
        with self.lock:
            return self.conn.execute("SELECT COUNT(*) FROM labels WHERE choice IS NOT NULL").fetchone()[0]

    def order(self, annotator: str) -> list[int]:
        with self.lock:
            ids = [r[0] for r in self.conn.execute("SELECT id FROM tasks ORDER BY id")]
        _seeded("order", annotator).shuffle(ids)
        return ids

    def next_task(self, annotator: str) -> Shown | None:
        with self.lock:
            done = {r[0] for r in self.conn.execute("SELECT task_id FROM labels WHERE annotator = ?", (annotator,))}
        order = self.order(annotator)
        for i, task_id in enumerate(order):
            if task_id not in done:
                with self.lock:
                    prompt, a, b = self.conn.execute("SELECT prompt, a, b FROM tasks WHERE id = ?", (task_id,)).fetchone()
                a_shown_as = _a_shown_as(annotator, task_id)
                left, right = (a, b) if a_shown_as == "A" else (b, a)
                return Shown(task_id, prompt, left, right, a_shown_as, i + 1, len(order))
        return None

    def submit(self, annotator: str, task_id: int, choice: int | None, comment: str = "") -> bool:
        """Record an answer (``choice`` None = skipped); committed before returning. A second submit
        of the same (annotator, task) changes nothing and returns False."""
        if choice is not None and not 1 <= choice <= 8:
            raise ValueError(f"choice must be 1..8, got {choice}")
        a_shown_as = _a_shown_as(annotator, task_id)
        with self.lock:
            if self.conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
                raise ValueError(f"no task {task_id}")
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO labels (annotator, task_id, a_shown_as, choice, comment, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (annotator, task_id, a_shown_as, choice, comment, time.time()),
                )
            return cur.rowcount == 1

    def labels(self) -> list[dict]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT l.annotator, l.task_id, l.a_shown_as, l.choice, l.comment, t.prompt, t.a, t.b, t.source FROM labels l JOIN tasks t ON t.id = l.task_id ORDER BY l.created"
            ).fetchall()
        keys = ("annotator", "task_id", "a_shown_as", "choice", "comment", "prompt", "a", "b", "source")
        return [dict(zip(keys, r)) for r in rows]


def to_comparison(label: dict) -> dict | None:
    """A stored label as a comparison row that ``preftune reward`` / ``dpo`` read unchanged."""
    if label["choice"] is None:
        return None
    left_wins = label["choice"] <= 4
    chosen, rejected = (label["a"], label["b"]) if a_won(label) else (label["b"], label["a"])
    return {
        "prompt": label["prompt"],
        "chosen": chosen,
        "rejected": rejected,
        "strength": STRENGTH[label["choice"]],
        "annotator": label["annotator"],
        "chosen_shown_as": "A" if left_wins else "B",
        "comment": label["comment"],
        "task_id": label["task_id"],
    }


def stats(labels: list[dict]) -> dict:
    """Inter-annotator agreement (on which of a/b is better, over tasks with 2+ labels) and
    position bias (share of answers preferring the left response, 0.5 = none)."""
    answered = [lab for lab in labels if lab["choice"] is not None]
    by_task: dict[int, list[bool]] = {}
    for lab in answered:
        by_task.setdefault(lab["task_id"], []).append(a_won(lab))
    agree = total = 0
    for votes in by_task.values():
        for i in range(len(votes)):
            for j in range(i + 1, len(votes)):
                agree += votes[i] == votes[j]
                total += 1
    left = sum(lab["choice"] <= 4 for lab in answered)
    return {
        "labels": len(labels),
        "answered": len(answered),
        "skipped": len(labels) - len(answered),
        "annotators": len({lab["annotator"] for lab in labels}),
        "pairwise_agreement": agree / total if total else None,
        "annotator_pairs": total,
        "left_preference_rate": left / len(answered) if answered else None,
    }
