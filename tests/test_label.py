import http.client
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
            except (OSError, http.client.HTTPException):  # the server is gone, perhaps mid-reply: not acknowledged
                return

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


# ------------------------------------------------------------------ load and attack


def _label_load():
    """bench/label_load.py, imported by path (bench/ is scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("label_load", Path(__file__).resolve().parents[1] / "bench" / "label_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sixteen_annotators_through_sigkills_and_restarts_lose_no_acknowledged_label(tmp_path):
    report = _label_load().run(annotators=16, labels=100, kills=2, seed=1, workdir=tmp_path, timeout=90)
    assert report["errors"] == [] and report["finished"] == 16
    assert report["kills"] == 2
    assert report["lost"] == 0
    # each annotator labels each of the 100 tasks once; a POST cut by a kill is retried until answered
    assert report["acknowledged"] == report["stored"] == 1600
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]


ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-0123456789abcdefgh"
PAYLOAD = "<script>alert(1)</script>"


def _app(tmp_path, tokens=None, rows=TASKS):
    from fastapi.testclient import TestClient

    from preftune.label.app import create_app

    store = Store(tmp_path / "l.sqlite")
    store.add_tasks(read_tasks(_tasks_file(tmp_path / "t.jsonl", rows)))
    app = create_app(store, tokens)
    return app, TestClient(app, raise_server_exceptions=False), store


def _asgi_get(app, raw_path: bytes) -> tuple[int, dict, bytes]:
    """GET with the path exactly as a client sent it, in the scope uvicorn builds for it (httpx, and
    so TestClient, resolves ``..`` before sending)."""
    import asyncio
    from urllib.parse import unquote

    path, _, query = raw_path.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(path.decode("ascii")),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    headers = {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


TRAVERSALS = [
    b"/../store.py",
    b"/../app.py",
    b"/..%2fstore.py",
    b"/%2e%2e/store.py",
    b"/%2e%2e%2f%2e%2e%2flabel%2fstore.py",
    b"/%252e%252e/store.py",
    b"/app.js/../../store.py",
    b"/app.js/..%2f..%2fstore.py",
    b"/app.css/../../label/store.py",
    b"/static/app.js",
    b"/static/../../etc/passwd",
    b"/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
    b"/api/../../../../etc/passwd",
    b"/..\\store.py",
    b"/app.js%00.py",
    b"//etc/passwd",
    b"/index.html",
    b"/./app.js",
]


def _no_file_leaked(body: bytes) -> bool:
    return not any(s in body for s in (b"root:", b"class Store", b"import ", b"def ", b"use strict", b"<html"))


def test_static_routes_serve_their_three_files_and_no_path_reaches_another(tmp_path):
    from preftune.label.app import STATIC

    app, client, _ = _app(tmp_path)
    for route, name in (("/", "index.html"), ("/app.js", "app.js"), ("/app.css", "app.css")):
        r = client.get(route)
        assert r.status_code == 200 and r.text == (STATIC / name).read_text()
    for raw in TRAVERSALS:
        status, headers, body = _asgi_get(app, raw)
        assert status == 404 and _no_file_leaked(body), raw
        assert headers["content-security-policy"].startswith("default-src 'none'")


def test_token_cannot_be_bypassed_and_nothing_is_stored_without_it(tmp_path):
    _, client, store = _app(tmp_path, {"alice": ALICE, "bob": BOB})
    attempts = [  # (annotator, token); None = no token at all
        ("alice", None),
        ("alice", ""),
        ("alice", "wrong"),
        ("alice", BOB),  # another annotator's token
        ("bob", ALICE),  # a token for a different name than the one in the request
        ("mallory", ALICE),
        ("Alice", ALICE),  # names are exact: no case folding
        ("ALICE", ALICE),
        ("alice ", ALICE),
        (" alice", ALICE),
        ("alice", ALICE.upper()),
        ("alice", ALICE[:-1]),
        ("alice", ALICE + "x"),
        ("alice", ALICE + " "),
        ("alice", "é" * len(ALICE)),  # non-ASCII: was a 500 (hmac.compare_digest refuses non-ASCII str)
        ("alice", "\u00e9" + ALICE[1:]),
    ]
    for annotator, token in attempts:
        params = {"annotator": annotator} | ({} if token is None else {"token": token})
        r = client.get("/api/next", params=params)
        assert r.status_code == 403 and "prompt" not in r.text, (annotator, token)
        body = {"annotator": annotator, "task_id": 1, "choice": 1} | ({} if token is None else {"token": token})
        assert client.post("/api/label", json=body).status_code == 403, (annotator, token)
    # the token is read from the request body and query only: a header does not stand in for it
    assert client.get("/api/next", params={"annotator": "alice"}, headers={"Authorization": f"Bearer {ALICE}"}).status_code == 403
    assert (
        client.post(
            "/api/label", json={"annotator": "alice", "task_id": 1, "choice": 1}, headers={"Authorization": f"Bearer {ALICE}"}
        ).status_code
        == 403
    )
    assert store.labels() == []
    # the right token for the right name works
    assert client.get("/api/next", params={"annotator": "alice", "token": ALICE}).json()["done"] is False
    assert client.post("/api/label", json={"annotator": "alice", "token": ALICE, "task_id": 1, "choice": 1}).json() == {
        "ok": True,
        "new": True,
    }
    assert client.post("/api/label", json={"annotator": "bob", "token": BOB, "task_id": 1, "choice": 8}).json() == {"ok": True, "new": True}
    assert sorted((lab["annotator"], lab["choice"]) for lab in store.labels()) == [("alice", 1), ("bob", 8)]


def test_malformed_answers_get_4xx_never_500_and_store_nothing(tmp_path):
    _, client, store = _app(tmp_path, {"alice": ALICE})
    ok = {"annotator": "alice", "token": ALICE, "task_id": 1, "choice": 1}
    as_json = [
        *({**ok, "choice": c} for c in (0, 9, -1, 1.5, 1.0, "3", True, [1], {})),
        *({**ok, "task_id": t} for t in (0, -1, 999, 2**63, 2**70, 10**100, "1", 1.0, True, None, 1e400)),
        *({**ok, "annotator": a} for a in ("", "x" * 65, 5, None, ["alice"])),
        *({**ok, "comment": c} for c in ("x" * 4001, 5, None, {"a": 1})),
        *({**ok, "token": t} for t in (123, None, [ALICE], "x" * 129)),
        {**ok, "extra": 1},
        {**ok, "coment": "a typo would have dropped the comment"},
        {k: v for k, v in ok.items() if k != "task_id"},
        {k: v for k, v in ok.items() if k != "annotator"},
    ]
    raw = [
        b"{bad",
        b"",
        b"null",
        b"[]",
        b'"alice"',
        b"1",
        b"{}",
        b"[" * 10_000,  # nesting deep enough to overflow the JSON decoder's recursion
        json.dumps(ok).encode()[:-1],  # truncated
        json.dumps(ok).encode().replace(b'"alice"', b'"\xff\xfe"', 1),  # not UTF-8
        json.dumps(ok).replace("1}", "NaN}").encode(),
        # JSON's lone surrogates: valid JSON, not valid Unicode; the 422 that echoed them was a 500
        json.dumps({**ok, "comment": "X"}).replace('"X"', '"\\ud800"').encode(),
        json.dumps({**ok, "annotator": "X"}).replace('"X"', '"\\udfff"').encode(),
        json.dumps({**ok, "token": "X"}).replace('"X"', '"\\ud800"').encode(),
        json.dumps({**ok, "X": 1}).replace('"X"', '"\\ud800"').encode(),
    ]
    cases = [(json.dumps(body).encode(), "application/json") for body in as_json] + [(body, "application/json") for body in raw]
    form = b"annotator=alice&token=" + ALICE.encode() + b"&task_id=1&choice=1"
    cases += [(json.dumps(ok).encode(), "text/plain"), (form, "application/x-www-form-urlencoded"), (json.dumps(ok).encode(), None)]
    for content, ctype in cases:
        r = client.post("/api/label", content=content, headers={"Content-Type": ctype} if ctype else {})
        assert 400 <= r.status_code < 500 and isinstance(r.json(), dict), (content[:80], ctype, r.status_code)
        assert ALICE not in r.text  # a refusal says where and why, never echoes the input back
    assert store.labels() == []
    assert client.post("/api/label", json=ok).status_code == 200  # and the store still works


def test_oversized_and_chunked_bodies_are_refused_before_they_are_read(tmp_path):
    from preftune.label.app import MAX_BODY

    _, client, store = _app(tmp_path)
    small = json.dumps({"annotator": "alice", "task_id": 1, "choice": 1}).encode()
    padded = small[:-1] + b" " * (MAX_BODY + 1) + b"}"  # valid JSON, over the cap

    def chunks():
        yield padded

    assert client.post("/api/label", content=padded, headers={"Content-Type": "application/json"}).status_code == 413
    assert (
        client.post("/api/label", content=small, headers={"Content-Type": "application/json", "Content-Length": str(10**12)}).status_code
        == 413
    )
    # chunked: no length to check up front -> 411, whatever Content-Length says alongside it
    assert client.post("/api/label", content=chunks(), headers={"Content-Type": "application/json"}).status_code == 411
    for length in ("10", "", None):
        headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"} | (
            {} if length is None else {"Content-Length": length}
        )
        assert client.post("/api/label", content=padded, headers=headers).status_code == 411, length
    assert client.request("GET", "/api/next?annotator=alice", content=chunks()).status_code == 411
    for bad in ("abc", "-1", "0x10", "1e3", "²".encode("latin-1")):  # was a 500 (int() on the header)
        r = client.post("/api/label", content=small, headers={"Content-Type": "application/json", "Content-Length": bad})
        assert r.status_code == 400, bad
    assert store.labels() == []
    r = client.post("/api/label", content=small, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]


def _raw_http(base: str, request: bytes) -> int:
    """Send bytes as they are; the status of the first response."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


@pytest.mark.slow
def test_live_server_refuses_chunked_bodies_that_lie_about_their_length_and_serves_no_other_file(tmp_path):
    """Over real HTTP (uvicorn): ``Transfer-Encoding: chunked`` beside ``Content-Length: 10`` made the
    server read a chunked body of any size while the cap checked the 10; it was stored with a 200."""
    from preftune.label.app import MAX_BODY

    db = tmp_path / "l.sqlite"
    proc, base = _serve(tmp_path, db, _tasks_file(tmp_path / "t.jsonl"))
    try:
        body = json.dumps({"annotator": "alice", "task_id": 1, "choice": 1, "comment": "bypass"}).encode()
        body = body[:-1] + b" " * 2 * MAX_BODY + b"}"
        chunked = (
            b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 4096]), body[i : i + 4096]) for i in range(0, len(body), 4096)) + b"0\r\n\r\n"
        )
        head = b"POST /api/label HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        assert _raw_http(base, head + b"Transfer-Encoding: chunked\r\nContent-Length: 10\r\n\r\n" + chunked) == 411
        assert _raw_http(base, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked) == 411
        assert _raw_http(base, head + b"Content-Length: %d\r\n\r\n" % len(body) + body) == 413
        assert _raw_http(base, head + b"Content-Length: 40\r\n\r\n" + body) == 422  # the server reads 40 bytes, no more
        for raw in (b"/app.js/../../store.py", b"/%2e%2e/%2e%2e/label/store.py", b"/static/../../../../etc/passwd"):
            with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10) as s:
                s.sendall(b"GET " + raw + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                response = b""
                while chunk := s.recv(65536):
                    response += chunk
            assert response.startswith(b"HTTP/1.1 404") and _no_file_leaked(response.split(b"\r\n\r\n", 1)[1]), raw
        assert Store(db).labels() == []
        assert _post(base, {"annotator": "alice", "task_id": 1, "choice": 1}) == {"ok": True, "new": True}
    finally:
        proc.kill()


def test_script_in_comments_and_completions_is_data_shown_as_text_and_exported_verbatim(tmp_path):
    from preftune.label.app import STATIC

    comment = f'{PAYLOAD}</textarea><img src=x onerror=alert(2)> "q" \\ &amp; ünï\nline 2'
    rows = [{"prompt": f"Human: {PAYLOAD}\n\nAssistant:", "a": PAYLOAD, "b": " fine."}]
    _, client, _ = _app(tmp_path, rows=rows)
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    # the page has no inline script for the CSP to block, and its script never parses text as HTML
    assert "<script src=" in page.text and "<script>" not in page.text
    js = (STATIC / "app.js").read_text()
    assert not any(sink in js for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("))
    task = client.get("/api/next", params={"annotator": "alice"})
    assert task.headers["content-type"] == "application/json" and "script-src 'self'" in task.headers["content-security-policy"]
    assert {task.json()["a"], task.json()["b"]} == {PAYLOAD, " fine."} and PAYLOAD in task.json()["prompt"]
    assert client.post("/api/label", json={"annotator": "alice", "task_id": 1, "choice": 1, "comment": comment}).status_code == 200

    # exported rows are data for training: the text as it was typed, in JSON strings, neither
    # HTML-escaped nor stripped (whatever shows them as HTML must escape them then)
    out = tmp_path / "prefs.jsonl"
    assert main(["label", "export", "--db", str(tmp_path / "l.sqlite"), "--out", str(out)]) == 0
    text = out.read_text()
    assert PAYLOAD in text and "&lt;" not in text
    (row,) = [json.loads(line) for line in text.splitlines()]
    assert row["comment"] == comment
    assert {row["chosen"], row["rejected"]} == {PAYLOAD, " fine."} and row["prompt"] == rows[0]["prompt"]
