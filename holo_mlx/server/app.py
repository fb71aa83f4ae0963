"""The FastAPI application: settings, lifespan (background model load), middleware, small routes."""

import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..runtime import device_name
from . import chat, completions, embeddings, localize, playground
from .content import ImagePolicy
from .engine import Engine
from .errors import error_response, install_error_handlers
from .protocol import ModelCard, ModelList, dump

log = logging.getLogger("holo_mlx.server")


@dataclass
class Settings:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_side: int | None = 1440
    max_pixels: int | None = 1_003_520
    api_key: str | None = None
    served_model_name: str | None = None
    allow_remote_images: bool = False
    allow_local_images: bool = False
    max_body_bytes: int = 64 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024
    max_model_len: int | None = None
    max_num_seqs: int = 8
    max_queue: int = 64
    prefix_cache_bytes: int = 1 << 30
    vision_cache_bytes: int = 256 << 20

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.model.rstrip("/")).name


class BodyLimit:
    """413 for bodies over the limit, counted as they stream in (Content-Length may be absent or lie)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(413, f"request body larger than {self.max_bytes:,} bytes", code="body_too_large")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class Gate:
    """API-key check on /v1 and request counting by route and status.

    Plain ASGI rather than @app.middleware: Starlette's BaseHTTPMiddleware hides client
    disconnects from request.is_disconnected(), which non-streaming cancellation relies on.
    """

    def __init__(self, app, api_key: str | None, metrics):
        self.app, self.metrics = app, metrics
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.expected and scope["path"].startswith("/v1/") and not hmac.compare_digest(
                    dict(scope["headers"]).get(b"authorization", b""), self.expected):
                response = error_response(401, "invalid or missing API key (Authorization: Bearer ...)",
                                          code="invalid_api_key")
                await response(scope, receive, recording_send)
            else:
                await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()


def create_app(settings: Settings) -> FastAPI:
    engine = Engine(settings.model, max_side=settings.max_side, max_pixels=settings.max_pixels,
                    max_model_len=settings.max_model_len, max_num_seqs=settings.max_num_seqs,
                    max_waiting=settings.max_queue, prefix_cache_bytes=settings.prefix_cache_bytes,
                    vision_cache_bytes=settings.vision_cache_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()  # loads in the background: /health answers 503 "loading" meanwhile
        yield
        engine.stop()

    app = FastAPI(title="holo-mlx", lifespan=lifespan)
    app.state.engine = engine
    app.state.served_model_name = settings.model_name
    app.state.image_policy = ImagePolicy(allow_remote=settings.allow_remote_images,
                                         allow_local=settings.allow_local_images,
                                         max_bytes=settings.max_image_bytes)
    app.state.started = int(time.time())
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Gate, api_key=settings.api_key, metrics=engine.metrics)

    @app.get("/metrics")
    async def metrics():
        return Response(engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health():
        body = {"status": engine.status, "model": settings.model_name, "model_path": settings.model,
                "device": device_name(), "dtype": engine.dtype, "max_side": settings.max_side,
                "max_pixels": settings.max_pixels, "load_error": engine.load_error,
                "requests_running": engine.running, "requests_waiting": engine.waiting}
        return JSONResponse(body, status_code=200 if engine.status == "ready" else 503)

    @app.get("/v1/models")
    async def models():
        return dump(ModelList(data=[ModelCard(id=settings.model_name, created=app.state.started)]))

    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.include_router(localize.router)
    app.include_router(playground.router)
    return app
