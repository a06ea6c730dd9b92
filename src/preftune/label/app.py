"""The labelling web app: one page, no front-end build step, FastAPI + the SQLite store.

Safety: model outputs reach the page only through ``textContent`` (never parsed as HTML), and a
Content-Security-Policy forbids inline scripts, so a completion holding ``<script>`` shows as
text and runs nothing. Request bodies are capped. Off localhost, every request needs the
annotator's token.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from .store import SCALE, Store

MAX_BODY = 16 * 1024  # bytes; an answer is a choice and a comment
STATIC = Path(__file__).parent / "static"
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'"


class Answer(BaseModel):
    annotator: str = Field(min_length=1, max_length=64)
    token: str = Field(default="", max_length=128)
    task_id: int
    choice: int | None = Field(default=None, ge=1, le=8)  # None = skip
    comment: str = Field(default="", max_length=4000)


def create_app(store: Store, tokens: dict[str, str] | None = None) -> FastAPI:
    """``tokens`` maps annotator name -> token; None means open (localhost only)."""
    app = FastAPI(title="preftune labelling", docs_url=None, redoc_url=None, openapi_url=None)

    def check(annotator: str, token: str) -> None:
        if tokens is not None and not (annotator in tokens and hmac.compare_digest(tokens[annotator], token)):
            raise HTTPException(403, "unknown annotator or wrong token")

    @app.middleware("http")
    async def limits(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and int(length) > MAX_BODY:
            return JSONResponse({"detail": f"request body over {MAX_BODY} bytes"}, status_code=413)
        if request.method == "POST" and length is None:
            return JSONResponse({"detail": "Content-Length required"}, status_code=411)
        response = await call_next(request)
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
