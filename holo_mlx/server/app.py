"""The FastAPI application: the engine and the metrics around it, lifespan (background model load),
middleware, the small routes."""

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..engine.worker import Engine
from ..runtime import device_name
from ..settings import ServerConfig
from . import chat, completions, embeddings, localize, messages, playground, responses as responses_api, tokenize
from .content import ImagePolicy
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import LOOPBACK_NAMES, BodyLimit, Gate, HostCheck
from .openapi import responses, text_responses
from .protocol import Health, ModelCard, ModelList, dump
from .response_store import ResponseStore
from .served import Served, check_model_name


def create_app(config: ServerConfig) -> FastAPI:
    """The app; StoreError if the response store's file cannot be used (serve.py then exits, its URL unsaid)."""
    store = ResponseStore(config.responses_db_path, config.responses_store, config.responses_max_age_s)
    engine = Engine(config)
    metrics = Metrics(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()  # loads in the background: /health answers 503 "loading" meanwhile
        yield
        engine.stop()
        store.close()

    # The schema pages only on request: /docs loads Swagger UI from a CDN, which fails offline.
    docs = dict(docs_url="/docs", redoc_url="/redoc", openapi_url="/openapi.json") if config.enable_docs else \
        dict(docs_url=None, redoc_url=None, openapi_url=None)
    app = FastAPI(title="holo-mlx", lifespan=lifespan, **docs)
    app.state.config = config
    app.state.served = Served(engine, metrics)
    app.state.image_policy = ImagePolicy(allow_remote=config.allow_remote_images,
                                         allow_local=config.allow_local_images, max_bytes=config.max_image_bytes)
    app.state.started = int(time.time())
    app.state.responses = store
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)
    app.add_middleware(Gate, api_key=config.api_key, metrics=metrics)
    app.add_middleware(HostCheck, allowed=[*LOOPBACK_NAMES, config.host, *config.allowed_hosts])

    @app.get("/metrics", response_class=PlainTextResponse, responses=text_responses(400, 401))
    async def metrics_page():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # /v1/health too: the holo CLI's runtime probes its --base-url's /health (hcompai/holo-desktop-cli).
    @app.get("/health", responses={**responses(Health, 400), 503: {"model": Health}})
    @app.get("/v1/health", responses={**responses(Health, 400, 401), 503: {"model": Health}})
    async def health():
        body = {"status": engine.status, "model": config.model_name, "model_path": config.model,
                "device": device_name(), "dtype": engine.dtype, **image_limits(engine),
                "error": engine.failure.message if engine.failure is not None else None,
                "ranks": None if engine.ranks is None else [vars(rank) for rank in engine.ranks],
                "requests_running": engine.running, "requests_waiting": engine.waiting}
        return JSONResponse(body, status_code=200 if engine.status == "ready" else 503)

    @app.get("/v1/models", responses=responses(ModelList, 400, 401))
    async def models():
        return dump(ModelList(data=[ModelCard(id=name, created=app.state.started) for name in config.model_names]))

    @app.get("/v1/models/{model_id:path}", responses=responses(ModelCard, 400, 401, 404, 422))
    async def model(model_id: str):
        check_model_name(config.model_names, model_id)
        return dump(ModelCard(id=model_id, created=app.state.started))

    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.include_router(localize.router)
    app.include_router(messages.router)
    app.include_router(responses_api.router)
    app.include_router(playground.router)
    app.include_router(tokenize.router)
    return app


def image_limits(engine) -> dict:
    """The family, its coordinate space and the resize limits in force once the model is loaded (None before)."""
    prompts = engine.prompts
    if prompts is None:
        return {"family": None, "coordinates": None, "max_side": None, "max_pixels": None, "min_pixels": None}
    floor, ceiling = prompts.pixel_bounds
    family = engine.model.family
    return {"family": family.name, "coordinates": family.coordinates.name, "max_side": prompts.max_side,
            "max_pixels": ceiling, "min_pixels": floor}
