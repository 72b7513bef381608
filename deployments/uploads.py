"""Multipart uploads read with a running size limit: an oversize file is refused (413) while it
streams in, never after it has been stored or read whole into memory."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from deployments.content_types import is_multipart
from pipeline.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

# Room for the form's text fields and multipart framing on top of the file itself.
FORM_OVERHEAD_BYTES = 1024 * 1024


class _LimitedMultiPartParser(MultiPartParser):
    """Starlette's parser (files spool to disk past 1 MB) plus a running count of file bytes.

    Starlette caps text fields (``max_part_size``) but not files; the count is the one addition.
    """

    def __init__(self, *args: object, max_file_bytes: int, file_field: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._max_file_bytes = max_file_bytes
        self._file_field = file_field
        self._file_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None:
            self._file_bytes += end - start
            if self._file_bytes > self._max_file_bytes:
                raise PayloadTooLarge(
                    f"{self._file_field} is larger than {self._max_file_bytes // (1024 * 1024)} MB",
                    param=self._file_field,
                )
        super().on_part_data(data, start, end)


async def read_upload_form(request: Request, file_field: str, max_file_bytes: int) -> FormData:
    """The request's multipart form; the caller closes it (``await form.close()``)."""
    content_type = request.headers.get("content-type", "")
    if not is_multipart(content_type):
        raise UnsupportedMediaType(
            f"send multipart/form-data with the audio in {file_field!r} (got {content_type!r})",
            param="content-type",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_file_bytes + FORM_OVERHEAD_BYTES:
        raise PayloadTooLarge(
            f"the request is {int(declared)} bytes; {file_field} may be at most "
            f"{max_file_bytes // (1024 * 1024)} MB",
            param=file_field,
        )
    parser = _LimitedMultiPartParser(
        request.headers,
        request.stream(),
        max_files=1,
        max_fields=32,
        max_part_size=64 * 1024,
        max_file_bytes=max_file_bytes,
        file_field=file_field,
    )
    try:
        return await parser.parse()
    except MultiPartException as error:
        raise InvalidRequest(f"malformed multipart form: {error}", param=file_field) from error
