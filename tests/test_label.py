import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from preftune.cli import main
from preftune.data import DataError, load_comparisons
from preftune.label.store import Store, read_tasks, stats, to_comparison

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
TASKS = [
    {"prompt": "Human: Name 2 fruits.\n\nAssistant:", "a": " apple, pear.", "b": " dog."},
    {"prompt": "Human: List one tool.\n\nAssistant:", "a": " saw.", "b": " saw, saw."},
    {"prompt": "Human: Name 3 colors.\n\nAssistant:", "a": " red, blue, green.", "b": XSS},
]


def _tasks_file(path, rows=TASKS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tmp_path, db, tasks=None, port=None):
    port = port or _free_port()
    cmd = [sys.executable, "-m", "preftune.cli", "label", "serve", "--db", str(db), "--port", str(port)]
    proc = subprocess.Popen(cmd + (["--tasks", str(tasks)] if tasks else []), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(proc.stderr.read().decode())


def _post(base, body):
    req = urllib.request.Request(f"{base}/api/label", json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def test_each_annotator_sees_each_task_once_in_an_order_of_their_own(tmp_path):
    store = Store(tmp_path / "l.sqlite")
    store.add_tasks(read_tasks(_tasks_file(tmp_path / "t.jsonl", TASKS * 4)))
    orders = {}
    for who in ("alice", "bob"):
        seen = []
        while (shown := store.next_task(who)) is not None:
            assert shown.index == len(seen) + 1 and shown.total == 12
            seen.append(shown.task_id)
            assert store.submit(who, shown.task_id, 3) is True
        orders[who] = seen
    assert sorted(orders["alice"]) == sorted(orders["bob"]) == list(range(1, 13))
    assert orders["alice"] != orders["bob"]
    sides = {lab["a_shown_as"] for lab in store.labels()}
    assert sides == {"A", "B"}  # sides are randomised


def test_double_submit_is_idempotent_and_export_maps_sides_back(tmp_path):
    store = Store(tmp_path / "l.sqlite")
    store.add_tasks(read_tasks(_tasks_file(tmp_path / "t.jsonl")))
    shown = store.next_task("alice")
    assert store.submit("alice", shown.task_id, 1, "left is right") is True
    assert store.submit("alice", shown.task_id, 8, "changed my mind") is False  # the first answer stands
    (label,) = store.labels()
    row = to_comparison(label)
    assert row["chosen"] == shown.left and row["rejected"] == shown.right and row["strength"] == 1.0
    assert row["chosen_shown_as"] == "A" and row["comment"] == "left is right"


def test_stats_agreement_and_position_bias():
    base = {"prompt": "p", "a": "x", "b": "y", "comment": ""}
    labels = [
        {**base, "annotator": "u1", "task_id": 1, "a_shown_as": "A", "choice": 2},  # a wins, left
        {**base, "annotator": "u2", "task_id": 1, "a_shown_as": "B", "choice": 7},  # a wins, right
        {**base, "annotator": "u3", "task_id": 1, "a_shown_as": "A", "choice": 6},  # b wins, right
        {**base, "annotator": "u1", "task_id": 2, "a_shown_as": "A", "choice": None},  # skipped
    ]
    s = stats(labels)
    assert s["pairwise_agreement"] == pytest.approx(1 / 3) and s["annotator_pairs"] == 3
    assert s["left_preference_rate"] == pytest.approx(1 / 3) and s["skipped"] == 1


def test_malformed_task_file_is_refused_with_file_and_line(tmp_path):
    bad = _tasks_file(tmp_path / "t.jsonl", [TASKS[0], {"prompt": "p", "a": "only one side"}])
    with pytest.raises(DataError, match=r"t\.jsonl:2: expected string fields 'a' and 'b'"):
        read_tasks(bad)


def test_refuses_to_bind_off_localhost_without_tokens(tmp_path, capsys):
    tasks = _tasks_file(tmp_path / "t.jsonl")
    assert main(["label", "serve", "--tasks", str(tasks), "--db", str(tmp_path / "l.sqlite"), "--host", "0.0.0.0"]) == 2
    assert "refusing to bind 0.0.0.0" in capsys.readouterr().err


def test_token_and_size_limits(tmp_path):
    from fastapi.testclient import TestClient

    from preftune.label.app import create_app

    store = Store(tmp_path / "l.sqlite")
    store.add_tasks(read_tasks(_tasks_file(tmp_path / "t.jsonl")))
    client = TestClient(create_app(store, {"alice": "s3cret-token-0123456789"}))
    assert client.get("/api/next", params={"annotator": "alice", "token": "wrong"}).status_code == 403
    ok = client.get("/api/next", params={"annotator": "alice", "token": "s3cret-token-0123456789"})
    assert ok.status_code == 200 and "script-src 'self'" in ok.headers["content-security-policy"]
    big = {"annotator": "alice", "token": "s3cret-token-0123456789", "task_id": 1, "choice": 1, "comment": "x" * 20000}
    assert client.post("/api/label", json=big).status_code == 413


def test_concurrent_submits_on_one_store_lose_nothing(tmp_path):
    """The server's worker threads share one Store: every submit that returns must be stored, and
    none may fail because another thread's transaction was open."""
    store = Store(tmp_path / "l.sqlite")
    store.add_tasks(read_tasks(_tasks_file(tmp_path / "t.jsonl", TASKS * 30)))
    n = store.n_tasks()
    returned, errors = [], []
    start = threading.Barrier(8)

    def work(i):
        start.wait()
        for task_id in range(1 + i, n + 1, 8):
            try:
                if store.submit(f"ann{i % 3}", task_id, 3):
                    returned.append((f"ann{i % 3}", task_id))
                store.next_task(f"ann{i % 3}")
            except Exception as e:  # noqa: BLE001 - the test is that nothing raises
                errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = {(lab["annotator"], lab["task_id"]) for lab in Store(tmp_path / "l.sqlite").labels()}
    assert errors == []
    assert len(returned) == n and set(returned) == stored


@pytest.mark.slow
def test_sigkill_while_annotators_submit_keeps_every_acknowledged_label(tmp_path):
    tasks = _tasks_file(tmp_path / "t.jsonl", TASKS * 40)
    db = tmp_path / "l.sqlite"
    proc, base = _serve(tmp_path, db, tasks)
    acked: list[tuple[str, int]] = []
    stop = threading.Event()

    def annotate(name):
        while not stop.is_set():
            try:
                task = json.loads(urllib.request.urlopen(f"{base}/api/next?annotator={name}", timeout=5).read())
                if task["done"]:
                    return
                if _post(base, {"annotator": name, "task_id": task["task_id"], "choice": 2})["ok"]:
                    acked.append((name, task["task_id"]))
            except OSError:
                return  # the server is gone

    threads = [threading.Thread(target=annotate, args=(f"ann{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    while len(acked) < 40:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    stored = {(lab["annotator"], lab["task_id"]) for lab in Store(db).labels()}
    assert len(acked) >= 40 and set(acked) <= stored
    proc, base = _serve(tmp_path, db)  # restarts on the same database and carries on
    try:
        nxt = json.loads(urllib.request.urlopen(f"{base}/api/next?annotator=ann0", timeout=5).read())
        assert nxt["done"] or (("ann0", nxt["task_id"]) not in stored)
    finally:
        proc.kill()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_browser_labels_three_tasks_with_mouse_and_keyboard_then_exported_labels_train_a_reward_model(tmp_path, model, tokenizer):
    from playwright.sync_api import sync_playwright

    db = tmp_path / "l.sqlite"
    proc, base = _serve(tmp_path, db, _tasks_file(tmp_path / "t.jsonl"))
    try:
        with sync_playwright() as pw:
            flags = [
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ]
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
            page = browser.new_page()
            page.goto(f"{base}/?annotator=alice")
            page.wait_for_selector("text=Task 1 of 3")
            seen = []
            for step in range(3):
                page.wait_for_selector(f"text=Task {step + 1} of 3")
                seen.append((page.text_content("#response-a"), page.text_content("#response-b")))
                if step == 0:  # mouse: click "A much better", type a comment, click Next
                    page.click("#scale button[data-value='1']")
                    page.fill("#comment", "clear answer")
                    page.click("#next")
                elif step == 1:  # keyboard: 7 then Enter
                    page.keyboard.press("7")
                    page.keyboard.press("Enter")
                else:  # mouse and keyboard: click B slightly better, then Enter
                    page.click("#scale button[data-value='6']")
                    page.keyboard.press("Enter")
            page.wait_for_selector("text=All tasks are done")
            # the script payload was shown as text and ran nothing
            assert any(XSS in pair for pair in seen)
            assert page.evaluate("window.__pwned") is None
            browser.close()
    finally:
        proc.kill()

    out = tmp_path / "prefs.jsonl"
    assert main(["label", "export", "--db", str(db), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and {r["annotator"] for r in rows} == {"alice"}
    assert sorted(r["strength"] for r in rows) == [0.5, 0.75, 1.0]
    first = next(r for r in rows if r["comment"] == "clear answer")
    assert first["chosen"] == seen[0][0] and first["chosen_shown_as"] == "A"
    assert len(load_comparisons(out)) == 3  # the reward/DPO reader takes it unchanged

    from preftune.models import save_model

    save_model(model, tokenizer, tmp_path / "policy")
    args = ["reward", "--model", str(tmp_path / "policy"), "--data", str(out), "--eval-data", str(out), "--train.out", str(tmp_path / "rm")]
    assert (
        main([*args, "--train.max-steps", "2", "--train.batch-size", "2", "--no-world-eval", "--train.no-progress", "--use-strength"]) == 0
    )
    assert (tmp_path / "rm/config.json").exists()
