"""The labelling web app: one page, no front-end build step, FastAPI + the SQLite store.

Safety: model outputs reach the page only through ``textContent`` (never parsed as HTML), and a
Content-Security-Policy forbids inline scripts, so a completion holding ``<script>`` shows as
text and runs nothing. Request bodies are capped: a request with a body must declare its
length up front (Content-Length, never Transfer-Encoding, which would override it), and the HTTP
server holds the body to that length. Answers are checked strictly (no extra fields, no coercion
of ``"3"`` or ``true`` to a number, no lone surrogates), and a refused one is answered with
where and why, never with its input echoed back. Off localhost, every request needs the
annotator's token.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from .store import SCALE, Store

MAX_BODY = 16 * 1024  # bytes; an answer is a choice and a comment
STATIC = Path(__file__).parent / "static"
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'"


class Answer(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")  # a misspelt "coment" is refused, not dropped

    # a length-checked str also refuses JSON's lone surrogates ("\ud800"), which SQLite cannot store
    annotator: str = Field(min_length=1, max_length=64)
    token: str = Field(default="", max_length=128)
    task_id: int = Field(ge=1, le=2**63 - 1)  # SQLite's INTEGER range
    choice: int | None = Field(default=None, ge=1, le=8)  # None = skip
    comment: str = Field(default="", max_length=4000)


def refuse_body(request: Request) -> Response | None:
    """The answer to a request whose body the cap cannot vouch for, or None to go on."""
    length = request.headers.get("content-length")
    if "transfer-encoding" in request.headers:  # chunked: the server reads it whatever Content-Length says
        return JSONResponse({"detail": "Content-Length required, Transfer-Encoding refused"}, status_code=411)
    if length is None:
        return JSONResponse({"detail": "Content-Length required"}, status_code=411) if request.method == "POST" else None
    if not (length.isascii() and length.isdigit()):
        return JSONResponse({"detail": "bad Content-Length"}, status_code=400)
    if int(length) > MAX_BODY:
        return JSONResponse({"detail": f"request body over {MAX_BODY} bytes"}, status_code=413)
    return None


def create_app(store: Store, tokens: dict[str, str] | None = None) -> FastAPI:
    """``tokens`` maps annotator name -> token; None means open (localhost only)."""
    app = FastAPI(title="preftune labelling", docs_url=None, redoc_url=None, openapi_url=None)

    def check(annotator: str, token: str) -> None:
        if tokens is not None and not (annotator in tokens and hmac.compare_digest(tokens[annotator].encode(), token.encode())):
            raise HTTPException(403, "unknown annotator or wrong token")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own answer echoes the input (a token, a lone surrogate that cannot be encoded)
        detail = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return Response(json.dumps({"detail": detail}), status_code=422, media_type="application/json")  # ASCII-only

    @app.middleware("http")
    async def limits(request: Request, call_next):
        response = refuse_body(request) or await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (STATIC / "index.html").read_text()

    @app.get("/app.js")
    def script() -> Response:
        return Response((STATIC / "app.js").read_text(), media_type="text/javascript")

    @app.get("/app.css")
    def style() -> Response:
        return Response((STATIC / "app.css").read_text(), media_type="text/css")

    @app.get("/api/next")
    def next_task(annotator: str, token: str = "") -> dict:
        check(annotator, token)
        shown = store.next_task(annotator)
        if shown is None:
            return {"done": True, "total": store.n_tasks()}
        return {
            "done": False,
            "task_id": shown.task_id,
            "prompt": shown.prompt,
            "a": shown.left,
            "b": shown.right,
            "index": shown.index,
            "total": shown.total,
            "scale": SCALE,
        }

    @app.post("/api/label")
    def label(answer: Answer) -> dict:
        check(answer.annotator, answer.token)
        try:
            new = store.submit(answer.annotator, answer.task_id, answer.choice, answer.comment)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return {"ok": True, "new": new}  # sent only after the commit

    return app
