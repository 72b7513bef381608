"""One error shape for every failure the API reports, schema errors included."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from ray.serve.context import _get_serve_request_context
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.metrics import record_error
from pipeline.errors import Overloaded, ServiceError, unwrapped

logger = logging.getLogger("ray.serve")


def error_response(
    status_code: int,
    error: dict[str, object],
    request: Request,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> JSONResponse:
    body = {"success": False, "error": error, "request_id": request_id(request), **extra}
    # The matched route's template, not the path (whose names and ids would make a series each);
    # "unrouted": no route matched, or the request was refused before routing (deployments/security.py).
    route = getattr(request.scope.get("route"), "path", "unrouted")
    record_error(route, request.method, status_code, str(error.get("code")))
    return JSONResponse(status_code=status_code, content=body, headers=headers)


def request_id(request: Request) -> str | None:
    """The id Serve logs this request under and returns in ``X-Request-ID``: the client's header,
    or the one Serve generated. Serve's request context has it however the request came in (no
    public accessor in Ray 2.60); the header is the fallback outside Serve (a plain test client)."""
    return _get_serve_request_context().request_id or request.headers.get("x-request-id")


def install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(ServiceError)
    async def _service_error(request: Request, error: ServiceError) -> JSONResponse:
        cause = unwrapped(error)
        if isinstance(cause, Overloaded):
            logger.warning("%s %s refused: %s", request.method, request.url.path, cause.message)
        elif cause.status_code >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, cause.message)
        return error_response(cause.status_code, cause.to_dict(), request, cause.headers())

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        details = [
            {
                "param": _location(item.get("loc", ())),
                "message": item.get("msg", ""),
                "type": item.get("type", ""),
            }
            for item in error.errors()
        ]
        first = details[0] if details else {"param": None, "message": "invalid request"}
        parts = [
            f"{detail['param']}: {detail['message']}" if detail["param"] else detail["message"]
            for detail in details
        ]
        message = "; ".join(parts) or "invalid request"
        return error_response(
            422,
            {
                "message": message,
                "type": "invalid_request_error",
                "code": "VALIDATION_ERROR",
                "param": first["param"],
            },
            request,
            details=details,
        )

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(error.status_code, "HTTP_ERROR")
        return error_response(
            error.status_code,
            {"message": str(error.detail), "type": "invalid_request_error", "code": code, "param": None},
            request,
        )

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("%s %s failed unexpectedly", request.method, request.url.path)
        return error_response(
            500,
            {
                "message": f"internal error: {type(error).__name__}",
                "type": "server_error",
                "code": "INTERNAL_ERROR",
                "param": None,
            },
            request,
        )


def validate_body(model: type[BaseModel], data: object) -> BaseModel:
    """``data`` through ``model`` for routes that parse their body themselves (multipart forms, the
    two-content-type VC route): a failure is the same 422 FastAPI gives for a declared body."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError(
            [{**item, "loc": ("body", *item["loc"])} for item in error.errors(include_url=False)]
        ) from error


def _location(loc: tuple | list) -> str | None:
    parts = [str(part) for part in loc if part not in ("body", "query", "path")]
    return ".".join(parts) or None
