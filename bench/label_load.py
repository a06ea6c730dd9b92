"""``preftune label serve`` under load and SIGKILL: no acknowledged label may be lost.

    python bench/label_load.py [--annotators 16] [--labels 100] [--kills 3] [--seed 0] [--out FILE.json]

Starts the server on a free loopback port over a fresh task file (``--labels`` tasks, so each
annotator labels every task once, in their own order), and runs one thread per annotator: GET
/api/next, POST /api/label, until the server says done. Meanwhile it SIGKILLs the server
``--kills`` times, at seeded-random points between 10% and 90% of the expected labels, and
restarts it on the same database and port. An annotator whose request fails (the server is down,
or died mid-request) retries the same request until it gets an answer; a POST retried after its
first try was committed but never answered gets ``"new": false`` (the store's submit is
idempotent), which still counts as an acknowledgement. At the end the server is SIGKILLed once
more and the SQLite database is read directly: every acknowledged (annotator, task, choice,
comment) must be there, exactly.

Reported: labels acknowledged, lost (must be 0), kills, p50/p99/max latency in ms of the POST
attempts that were acknowledged (a retried POST's time is its answered attempt's), wall seconds.
One JSON line goes to ``--out``; the exit status is 1 if a label was lost or an annotator did not
finish.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
XSS = "<script>alert(1)</script>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


class Server:
    """``preftune label serve`` as a subprocess, started, SIGKILLed and restarted on one db and port."""

    def __init__(self, workdir: Path, tasks: Path, port: int):
        self.db, self.tasks, self.port = workdir / "labels.sqlite", tasks, port
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until GET / answers; returns the seconds that took."""
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "preftune.cli", "label", "serve", "--db", str(self.db), "--port", str(self.port)]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(cmd + ["--tasks", str(self.tasks)], stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the server did not answer within {timeout} s:\n{self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()


class Annotator:
    """One annotator's loop over a keep-alive connection; every failed request is retried as is."""

    def __init__(self, name: str, port: int, seed: int, deadline: float):
        self.name, self.port, self.deadline = name, port, deadline
        self.rng = random.Random(f"{seed}/{name}")
        self.conn: http.client.HTTPConnection | None = None
        self.acked: list[dict] = []  # {"task_id", "choice", "comment", "ms", "new"}
        self.retries = 0
        self.done = False
        self.error: str | None = None

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[dict, float]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        while True:
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"{self.name}: gave up at the deadline")
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                t0 = time.perf_counter()
                self.conn.request(method, path, payload, headers)
                response = self.conn.getresponse()
                data = response.read()
                seconds = time.perf_counter() - t0
            except (OSError, http.client.HTTPException):  # the server is down or died mid-request
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                self.retries += 1
                time.sleep(0.05)
                continue
            if response.status != 200:
                raise RuntimeError(f"{self.name}: {method} {path} -> {response.status} {data[:200]!r}")
            return json.loads(data), seconds

    def run(self, progress) -> None:
        try:
            while True:
                task, _ = self.request("GET", f"/api/next?annotator={self.name}")
                if task["done"]:
                    self.done = True
                    return
                n = len(self.acked)
                choice = None if self.rng.random() < 0.05 else self.rng.randint(1, 8)  # some skips
                comment = f"{self.name} #{n}" + (f' {XSS} "q" ünï' if n % 7 == 0 else "")
                body = {"annotator": self.name, "task_id": task["task_id"], "choice": choice, "comment": comment}
                answer, seconds = self.request("POST", "/api/label", body)
                if answer.get("ok") is not True:
                    raise RuntimeError(f"{self.name}: unexpected answer {answer}")
                self.acked.append(
                    {"task_id": task["task_id"], "choice": choice, "comment": comment, "ms": seconds * 1000, "new": answer["new"]}
                )
                progress()
        except Exception as e:  # noqa: BLE001 - reported, and the run fails on it
            self.error = repr(e)
        finally:
            if self.conn is not None:
                self.conn.close()


def write_tasks(path: Path, n: int) -> Path:
    rows = [
        {
            "prompt": f"Human: Task {i}: name {i % 5 + 1} fruits.\n\nAssistant:",
            "a": f" apple #{i}",
            "b": XSS if i % 10 == 0 else f" dog #{i}",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stored_labels(db: Path) -> dict[tuple[str, int], tuple[int | None, str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {(a, t): (c, m) for a, t, c, m in conn.execute("SELECT annotator, task_id, choice, comment FROM labels")}
    finally:
        conn.close()


def run(
    annotators: int = 16, labels: int = 100, kills: int = 3, seed: int = 0, workdir: str | Path | None = None, timeout: float = 120.0
) -> dict:
    """The load test; returns the report (see the module docstring). ``workdir`` keeps the task
    file, database and server log (a temporary directory if None)."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="label-load-") as tmp:
            return run(annotators, labels, kills, seed, tmp, timeout)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    expected = annotators * labels
    lo, hi = int(expected * 0.1), max(int(expected * 0.9), int(expected * 0.1) + kills)
    thresholds = sorted(rng.sample(range(lo, hi), kills))  # kill when this many labels are acknowledged

    server = Server(workdir, write_tasks(workdir / "tasks.jsonl", labels), free_port())
    t0 = time.monotonic()
    first_start = server.start()
    deadline = time.monotonic() + timeout
    acked = 0
    changed = threading.Condition()

    def progress() -> None:
        nonlocal acked
        with changed:
            acked += 1
            changed.notify_all()

    people = [Annotator(f"ann{i:02d}", server.port, seed, deadline) for i in range(annotators)]
    threads = [threading.Thread(target=p.run, args=(progress,), daemon=True) for p in people]
    for t in threads:
        t.start()
    kill_log, down = [], 0.0
    try:
        for at in thresholds:
            with changed:
                while acked < at and any(t.is_alive() for t in threads) and time.monotonic() < deadline:
                    changed.wait(0.1)
                if acked < at:
                    break  # the annotators finished, failed or ran out of time before this kill point
                at_kill = acked
            time.sleep(rng.uniform(0, 0.02))  # so the kill lands anywhere in a request, not just after an ack
            server.kill()
            down += (restart := server.start())
            kill_log.append({"after_acks": at_kill, "restart_s": round(restart, 3)})
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()) + 15)
    finally:
        server.kill()  # the last stop is a SIGKILL too: what was acknowledged must be on disk
    wall = time.monotonic() - t0

    stored = stored_labels(server.db)
    records = [(p.name, a) for p in people for a in p.acked]
    lost = sum(stored.get((name, a["task_id"])) != (a["choice"], a["comment"]) for name, a in records)
    ms = sorted(a["ms"] for _, a in records)
    return {
        "annotators": annotators,
        "labels_per_annotator": labels,
        "seed": seed,
        "acknowledged": len(records),
        "expected": expected,
        "stored": len(stored),
        "lost": lost,
        "kills": len(kill_log),
        "kills_requested": kills,
        "kill_points": kill_log,
        "failed_attempts": sum(p.retries for p in people),  # retried: refused while down, or cut by a kill
        "acked_on_retry": sum(not a["new"] for _, a in records),  # committed before a kill, answered after
        "finished": sum(p.done for p in people),
        "errors": [p.error for p in people if p.error],
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else float("nan"),
        "first_start_s": round(first_start, 3),
        "down_s": round(down, 3),
        "wall_s": round(wall, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2]
    )
    parser.add_argument("--annotators", type=int, default=16, help="annotator threads (default: 16)")
    parser.add_argument("--labels", type=int, default=100, help="labels per annotator = tasks in the task file (default: 100)")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILL + restart the server this many times mid-run (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill points and the annotators' answers (default: 0)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds of labelling (default: 120)")
    parser.add_argument("--workdir", default=None, help="keep the task file, database and server log here (default: a temporary directory)")
    parser.add_argument("--out", default=None, help="write the report here as one JSON line")
    args = parser.parse_args(argv)
    report = run(args.annotators, args.labels, args.kills, args.seed, args.workdir, args.timeout)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report) + "\n")
    rows = [
        ("acknowledged", f"{report['acknowledged']} / {report['expected']}"),
        ("lost", report["lost"]),
        ("kills", f"{report['kills']} (restarts {report['down_s']:.1f} s in all)"),
        ("acked on retry", report["acked_on_retry"]),
        ("finished", f"{report['finished']} / {report['annotators']} annotators"),
        ("POST p50 / p99 / max", f"{report['p50_ms']:.1f} / {report['p99_ms']:.1f} / {report['max_ms']:.1f} ms"),
        ("wall", f"{report['wall_s']:.1f} s"),
    ]
    for key, value in rows:
        print(f"{key:<22} {value}")
    for e in report["errors"]:
        print("error:", e, file=sys.stderr)
    ok = report["lost"] == 0 and report["finished"] == args.annotators and not report["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
