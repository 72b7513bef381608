"""The one error type of the service: routes and pipeline steps raise, one handler formats.

Every error the service reports has the JSON shape
``{"success": false, "error": {"message", "type", "code", "param"}, "request_id"}``: the
``error`` object is OpenAI's (so the official client surfaces ``message``), ``code`` is the
reference server's upper-case error code.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error with an HTTP status, a stable code and, where one field is at fault, its name."""

    status_code: int = 500
    code: str = "INTERNAL_ERROR"
    error_type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross process boundaries (Serve replica -> ingress); keep param and code on the way.
        return (_rebuild, (type(self), self.message, self.param, self.code))

    def to_dict(self) -> dict[str, object]:
        return {"message": self.message, "type": self.error_type, "code": self.code, "param": self.param}

    def headers(self) -> dict[str, str]:
        """HTTP headers the error's response carries (Retry-After for an overload)."""
        return {}


class InvalidRequest(ServiceError):
    status_code = 400
    code = "VALIDATION_ERROR"
    error_type = "invalid_request_error"


class InvalidField(InvalidRequest):
    """A field outside what this server accepts, found after schema validation (a limit from the
    server's config): the same 422 FastAPI gives for a field outside the schema's own bounds."""

    status_code = 422


class Unauthorized(ServiceError):
    """No API key, or one this server does not know: OpenAI's ``invalid_api_key``."""

    status_code = 401
    code = "INVALID_API_KEY"
    error_type = "invalid_request_error"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status_code = 403
    code = "FORBIDDEN"
    error_type = "invalid_request_error"


class NotFound(ServiceError):
    status_code = 404
    code = "RESOURCE_NOT_FOUND"
    error_type = "invalid_request_error"


class Conflict(ServiceError):
    status_code = 409
    code = "CONFLICT"
    error_type = "invalid_request_error"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"
    error_type = "invalid_request_error"


class RequestTimeout(ServiceError):
    """The client sent its body too slowly (a stalled or slow-loris upload)."""

    status_code = 408
    code = "REQUEST_TIMEOUT"
    error_type = "invalid_request_error"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    error_type = "invalid_request_error"


class UnsupportedCapability(ServiceError):
    """The active engine cannot do what the request asks (cloning on Piper, VC without Chatterbox)."""

    status_code = 422
    code = "CAPABILITY_UNSUPPORTED"
    error_type = "invalid_request_error"


class UnsupportedLanguage(UnsupportedCapability):
    """Text in a script the active engine cannot speak (Cyrillic on an English voice, say)."""

    code = "UNSUPPORTED_LANGUAGE"


class EngineUnavailable(ServiceError):
    status_code = 503
    code = "MODEL_LOAD_ERROR"
    error_type = "server_error"


class GenerationFailed(ServiceError):
    status_code = 500
    code = "GENERATION_ERROR"
    error_type = "server_error"


class ReplicaCrashed(ServiceError):
    """A stage call killed its replica more often than it may be retried: not tried again, since an
    input that crashes replicas would otherwise take down every fresh one in turn."""

    status_code = 500
    code = "REPLICA_CRASHED"
    error_type = "server_error"


class Overloaded(ServiceError):
    """Past capacity (or draining for a stop): refused before any work, with a hint of when to
    come back (``Retry-After``). 503, not 429: the server is full, the caller did nothing wrong;
    the ``openai`` client retries both, honouring ``Retry-After``."""

    status_code = 503
    code = "SERVER_OVERLOADED"
    error_type = "server_error"

    def __init__(
        self, message: str, *, retry_after_sec: int, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after_sec = retry_after_sec

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_overloaded, (type(self), self.message, self.retry_after_sec, self.code))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_sec)}


class GenerationTimeout(ServiceError):
    """The request ran past the server's per-request time limit (``limits.request_timeout_sec``)."""

    status_code = 504
    code = "TIMEOUT"
    error_type = "server_error"


def unwrapped(error: ServiceError) -> ServiceError:
    """The ServiceError itself: Ray delivers one raised in another replica wrapped in a subclass
    that keeps the original as ``cause``."""
    cause = getattr(error, "cause", error)
    return cause if isinstance(cause, ServiceError) else error


def _rebuild_overloaded(cls: type[Overloaded], message: str, retry_after_sec: int, code: str) -> Overloaded:
    return cls(message, retry_after_sec=retry_after_sec, code=code)


def _rebuild(cls: type[ServiceError], message: str, param: str | None, code: str) -> ServiceError:
    return cls(message, param=param, code=code)
