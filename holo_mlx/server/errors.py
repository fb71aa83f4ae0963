"""Every error leaves the server in OpenAI's envelope: {"error": {"message", "type", "param", "code"}},
except on Anthropic's routes (/v1/messages...), where it takes Anthropic's: {"type": "error", "error":
{"type", "message"}}, with Anthropic's statuses.

The engine's refusals (queue full, model not ready) and a schema met mid-answer become APIErrors here.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..constrain import SchemaError
from ..engine.worker import NotReady, QueueFull

log = logging.getLogger("holo_mlx.server")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def as_api_error(error: Exception) -> APIError | None:
    """What the client is told of an exception; None for one it should never see (a bug: 500)."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, QueueFull):
        return APIError(429, f"server busy: {error.waiting} requests already waiting; retry shortly",
                        code="queue_full", headers={"Retry-After": "1"})
    if isinstance(error, NotReady):  # only a model still loading is worth a retry here
        return APIError(503, error.message, code=error.code,
                        headers={"Retry-After": "5"} if error.status == "loading" else None)
    if isinstance(error, SchemaError):  # met mid-answer: still the request's own schema
        return APIError(400, str(error), code="invalid_json_schema")
    return None


def envelope(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


ANTHROPIC_PATHS = ("/v1/messages",)
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
# Anthropic answers bad fields with 400 and an unavailable model with 529 (overloaded), which its SDK retries.
ANTHROPIC_STATUS = {422: 400, 503: 529}


def anthropic_envelope(status: int, message: str, param: str | None = None) -> tuple[int, dict]:
    """(Anthropic's status, its envelope): no param field there, so the message names the field."""
    status = ANTHROPIC_STATUS.get(status, status)
    if param and not message.startswith(param):
        message = f"{param}: {message}"
    return status, {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES.get(status, "api_error"),
                                               "message": message}}


def error_response(status: int, message: str, *, param=None, code=None, headers=None, path: str = "") -> JSONResponse:
    """The error in the envelope of the API that `path` belongs to."""
    if path.startswith(ANTHROPIC_PATHS):
        status, body = anthropic_envelope(status, message, param)
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse(envelope(status, message, param, code), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, error: Exception):
        answer = as_api_error(error)
        return error_response(answer.status, answer.message, param=answer.param, code=answer.code,
                              headers=answer.headers, path=request.url.path)

    for kind in (APIError, QueueFull, NotReady, SchemaError):
        app.add_exception_handler(kind, api_error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        if first["type"] == "json_invalid":  # its location is a character offset, not a field
            reason = first.get("ctx", {}).get("error", "decode error")
            return error_response(422, f"the body is not valid JSON ({reason} at character {first['loc'][-1]})",
                                  code="invalid_json", path=request.url.path)
        location = [str(part) for part in first["loc"] if part != "body"]
        message = f"{'.'.join(location) or 'body'}: {first['msg']}"
        if first["type"] == "unsupported_parameter":  # well formed, but asks what this server cannot do
            return error_response(400, message, param=".".join(location), code="unsupported_parameter",
                                  path=request.url.path)
        return error_response(422, message, param=".".join(location) or None, code="invalid_schema",
                              path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = "no such route" if error.status_code == 404 else str(error.detail)
        return error_response(error.status_code, f"{message}: {request.method} {request.url.path}"
                              if error.status_code in (404, 405) else message, headers=error.headers,
                              path=request.url.path)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error: {type(error).__name__}: {error}", path=request.url.path)
