"""ASGI middleware around the app: body size limit, Host check, API key and request counting."""

import asyncio
import hmac

from .errors import error_response

# How much of a refused body's rest is read and dropped, and for how long, before the 413 goes out
# (nginx's lingering close): a socket closed on unread data resets, and the client loses the answer.
# A body further past the limit is not read: its sender may get the reset.
REFUSED_BODY_DRAIN_BYTES = 64 * 2**20
REFUSED_BODY_DRAIN_SECONDS = 5.0


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
            return await self._refuse(scope, receive, send, drain_rest=int(declared) <= REFUSED_BODY_DRAIN_BYTES)
        body, received, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            body.append(message.get("body", b""))
            received += len(body[-1])
            more = message.get("more_body", False)
            if received > self.max_bytes:
                return await self._refuse(scope, receive, send, drain_rest=more)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # later reads wait for the disconnect, as the app expects
            replayed = True
            return {"type": "http.request", "body": b"".join(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, drain_rest: bool):
        async def drain():
            dropped = 0
            while dropped <= REFUSED_BODY_DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                dropped += len(message.get("body", b""))

        if drain_rest:
            try:
                await asyncio.wait_for(drain(), REFUSED_BODY_DRAIN_SECONDS)
            except asyncio.TimeoutError:
                pass
        response = error_response(413, f"request body larger than {self.max_bytes:,} bytes", code="body_too_large",
                                  headers={"Connection": "close"}, path=scope["path"])
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
            param="Host", code="invalid_host", path=scope["path"])
        await response(scope, receive, send)


KEYED_PATHS = ("/v1/", "/tokenize", "/detokenize", "/metrics", "/docs", "/redoc", "/openapi.json")


class Gate:
    """API-key check, by either header (on /v1, /tokenize, /detokenize, /metrics and the schema pages; /health and the
    playground stay open)
    and request counting by route and status.

    Plain ASGI rather than @app.middleware: Starlette's BaseHTTPMiddleware hides client
    disconnects from request.is_disconnected(), which non-streaming cancellation relies on.
    """

    def __init__(self, app, api_key: str | None, metrics):
        self.app, self.metrics = app, metrics
        self.api_key = api_key.encode() if api_key else None

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        """`Authorization: Bearer KEY` (OpenAI's clients) or `x-api-key: KEY` (Anthropic's)."""
        bearer = headers.get(b"authorization", b"")
        return hmac.compare_digest(bearer, b"Bearer " + self.api_key) or \
            hmac.compare_digest(headers.get(b"x-api-key", b""), self.api_key)

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
            if self.api_key and scope["path"].startswith(KEYED_PATHS) and not self.authorized(dict(scope["headers"])):
                response = error_response(401, "invalid or missing API key (Authorization: Bearer ... or x-api-key)",
                                          code="invalid_api_key", path=scope["path"])
                await response(scope, receive, recording_send)
            else:
                await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
