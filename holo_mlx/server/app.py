"""The FastAPI application: settings, lifespan (background model load), middleware, small routes."""

import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..runtime import device_name
from . import chat, completions, embeddings, localize, playground
from .content import ImagePolicy
from ..engine.worker import Engine
from .errors import error_response, install_error_handlers
from .openapi import responses, text_responses
from .protocol import Health, ModelCard, ModelList, dump

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
    default_max_tokens: int = 4096
    allowed_hosts: list[str] = field(default_factory=list)  # beyond the loopback names and the bound host
    enable_docs: bool = False
    max_embedding_tokens: int = 300_000  # all inputs of one embeddings request together
    embedding_chunk: int = 512  # tokens per embedding work unit; generation steps run between units

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.model.rstrip("/")).name


class BodyLimit:
    """413 as soon as a body passes the limit, counted as it streams in (Content-Length may be
    absent or lie). The body is read here whole, so the app never sees a cut one."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        body, received, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            body.append(message.get("body", b""))
            received += len(body[-1])
            more = message.get("more_body", False)
            if received > self.max_bytes:
                return await self._refuse(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # later reads wait for the disconnect, as the app expects
            replayed = True
            return {"type": "http.request", "body": b"".join(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(413, f"request body larger than {self.max_bytes:,} bytes", code="body_too_large",
                                  headers={"Connection": "close"})
        await response(scope, receive, send)


def host_name(header: bytes) -> str:
    """The Host header without its port: "[::1]:8000" -> "::1", "Localhost:8000" -> "localhost"."""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class HostCheck:
    """Answers only requests whose Host header names this server: a web page the user visits could
    otherwise point a name it controls at 127.0.0.1 (DNS rebinding) and drive the server."""

    def __init__(self, app, allowed: list[str]):
        self.app = app
        self.allowed = {name.lower().strip("[]") for name in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or "*" in self.allowed:
            return await self.app(scope, receive, send)
        host = host_name(dict(scope["headers"]).get(b"host", b""))
        if host in self.allowed:
            return await self.app(scope, receive, send)
        shown = ", ".join(sorted(self.allowed))
        response = error_response(
            400, f"Host header {host!r} is not allowed: this server answers to {shown}. To reach it under "
            f"that name, start it with --allowed-hosts {host or 'NAME'} (or HOLO_ALLOWED_HOSTS; '*' allows any)",
            param="Host", code="invalid_host")
        await response(scope, receive, send)


KEYED_PATHS = ("/v1/", "/metrics", "/docs", "/redoc", "/openapi.json")


class Gate:
    """API-key check (on /v1, /metrics and the schema pages; /health and the playground stay open)
    and request counting by route and status.

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
            if self.expected and scope["path"].startswith(KEYED_PATHS) and not hmac.compare_digest(
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
                    vision_cache_bytes=settings.vision_cache_bytes, embedding_chunk=settings.embedding_chunk)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()  # loads in the background: /health answers 503 "loading" meanwhile
        yield
        engine.stop()

    # The schema pages only on request: /docs loads Swagger UI from a CDN, which fails offline.
    docs = dict(docs_url="/docs", redoc_url="/redoc", openapi_url="/openapi.json") if settings.enable_docs else \
        dict(docs_url=None, redoc_url=None, openapi_url=None)
    app = FastAPI(title="holo-mlx", lifespan=lifespan, **docs)
    app.state.engine = engine
    app.state.served_model_name = settings.model_name
    app.state.image_policy = ImagePolicy(allow_remote=settings.allow_remote_images,
                                         allow_local=settings.allow_local_images,
                                         max_bytes=settings.max_image_bytes)
    app.state.started = int(time.time())
    app.state.default_max_tokens = settings.default_max_tokens
    app.state.max_embedding_tokens = settings.max_embedding_tokens
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Gate, api_key=settings.api_key, metrics=engine.metrics)
    app.add_middleware(HostCheck, allowed=[*LOOPBACK_NAMES, settings.host, *settings.allowed_hosts])

    @app.get("/metrics", response_class=PlainTextResponse, responses=text_responses(400, 401))
    async def metrics():
        return Response(engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", responses={**responses(Health, 400), 503: {"model": Health}})
    async def health():
        body = {"status": engine.status, "model": settings.model_name, "model_path": settings.model,
                "device": device_name(), "dtype": engine.dtype, "max_side": settings.max_side,
                "max_pixels": settings.max_pixels, "load_error": engine.load_error,
                "requests_running": engine.running, "requests_waiting": engine.waiting}
        return JSONResponse(body, status_code=200 if engine.status == "ready" else 503)

    @app.get("/v1/models", responses=responses(ModelList, 400, 401))
    async def models():
        return dump(ModelList(data=[ModelCard(id=settings.model_name, created=app.state.started)]))

    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.include_router(localize.router)
    app.include_router(playground.router)
    return app
