"""The content types routes take: JSON (checked before a JSON route validates its body) and multipart."""

from __future__ import annotations

from fastapi import Request

from pipeline.errors import UnsupportedMediaType


def is_multipart(content_type: str) -> bool:
    return content_type.startswith("multipart/form-data")


def is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def require_json(request: Request) -> None:
    """FastAPI reads a body of another declared type as bytes and answers a puzzling 422 ("Input
    should be a valid dictionary"); a 415 says what to send instead. A body with no content type
    is read as JSON, as FastAPI does (``requests.post(url, data=json.dumps(...))`` sends none)."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not is_json(content_type):
        raise UnsupportedMediaType(
            f"this route takes a JSON body: send Content-Type: application/json (got {content_type!r})",
            param="content-type",
        )
