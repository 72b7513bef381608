"""Hostile requests against every route of the real Serve app (offline Piper engine), byte for byte.

Each case is one raw HTTP/1.1 request and the answer it must get: the exact status, the one error
shape (``success`` false, ``error.{message,type,code,param}``, ``request_id``) and, where one field
is at fault, ``error.param`` naming it. ``http.client`` sends the request target as given: httpx
resolves ``..`` segments before sending, so a traversal test through httpx never reaches the
server. Traversal cases also check the error message quotes the path as the server received it.

No case may get a 5xx. Bodies cut short or stalled (408 after ``limits.body_timeout_sec``, cut
to seconds through the Ingress user_config) follow the battery. After it all the service still
speaks, the voice library has lost nothing, and the Serve logs record no 5xx since it began.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile

from deployments.graceful_stop import with_ingress_user_config
from pipeline.audio import decode_audio
from tests.conftest import app_config

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
SHORT_SENTENCE = "The battery is over and the service still speaks."
# One candidate, no Whisper: a case the server wrongly accepts costs a fraction of a second.
CHEAP = {
    "num_candidates_per_chunk": 1,
    "max_attempts_per_candidate": 1,
    "bypass_whisper_checking": True,
    "export_formats": ["wav"],
}
# 20 syntheses and transcriptions of one sentence: seconds of work, so a refusal that comes
# after generation instead of before it shows in the time taken.
EXPENSIVE = {
    "num_candidates_per_chunk": 10,
    "max_attempts_per_candidate": 2,
    "validation_threshold": 1.01,
    "export_formats": ["wav"],
}
SHORT_BODY_TIMEOUT_SEC = 3.0
PROBE_FOLDER = "probe"
PROBE_NAME = "hostile-probe"
PROBE_FILE = f"{PROBE_FOLDER}/{PROBE_NAME}.wav"
JSON = "application/json"
RUSSIAN = "Привет, как у тебя дела сегодня?"
CHINESE = "你好，今天天气很好。"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_sec: float

    def json(self) -> Any:
        return json.loads(self.body)


def send_raw(
    port: int,
    method: str,
    target: str,
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    timeout_sec: float = 30.0,
) -> Answer:
    """One request on a fresh connection, the target and body exactly as given.

    A ``Content-Length`` in ``headers`` replaces the real one (to declare more than is sent).
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_sec)
    started = time.perf_counter()
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        names = {name.lower() for name, _ in headers}
        for name, value in headers:
            connection.putheader(name, value)
        if "content-length" not in names and (body or method in ("POST", "PUT", "PATCH")):
            connection.putheader("Content-Length", str(len(body)))
        connection.putheader("Connection", "close")
        # The server may answer, and stop reading, before the whole body is sent.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.endheaders(body or None)
        response = connection.getresponse()
        data = response.read()
        answer_headers = {name.lower(): value for name, value in response.getheaders()}
        return Answer(response.status, answer_headers, data, time.perf_counter() - started)
    finally:
        connection.close()


@dataclass(frozen=True)
class Hostile:
    """One hostile request and the answer the contract gives it."""

    method: str
    target: str
    status: int
    code: str | None = None  # the exact error.code, where the contract fixes it
    param: str | None = None  # the field at fault
    body: bytes = b""
    content_type: str | None = JSON
    headers: tuple[tuple[str, str], ...] = ()
    seen_as: str | None = None  # what the error message must quote: the path as the server got it
    no_stage_calls: bool = False  # refused before any work: no stage replica logged a call for it
    timeout_sec: float = 30.0


def case(case_id: str, method: str, target: str, status: int, **fields: Any) -> Any:
    """A battery entry; ``send`` is a JSON value to serialise, ``body`` raw bytes."""
    if "send" in fields:
        fields["body"] = json.dumps(fields.pop("send")).encode()
    return pytest.param(Hostile(method, target, status, **fields), id=case_id)


def tts(**fields: Any) -> dict[str, Any]:
    return {"text": "Hi there.", **CHEAP, **fields}


def speech(**fields: Any) -> dict[str, Any]:
    return {"model": "tts-1", "voice": "alloy", "input": "Hi there.", "response_format": "wav", **fields}


def multipart(files: dict[str, tuple[str, bytes]], **fields: str) -> tuple[str, bytes]:
    """(content type, body) of a multipart form; built by hand so a form may carry no file."""
    boundary = "hostile-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()


V = "VALIDATION_ERROR"
LANGUAGE = "UNSUPPORTED_LANGUAGE"
CAPABILITY = "CAPABILITY_UNSUPPORTED"
MISSING = "RESOURCE_NOT_FOUND"
TOO_LARGE = "PAYLOAD_TOO_LARGE"
MEDIA = "UNSUPPORTED_MEDIA_TYPE"
OVER_LIMIT_TEXT = "Hello there. " * 800  # 10,400 characters; serve_config.yaml allows 10,000
OVER_BODY_LIMIT = "a" * (MIB + 1024)  # the JSON body limit is 1 MiB
TTS = "/api/v1/tts"
SPEECH = "/v1/audio/speech"
VC = "/api/v1/vc"
_no_file_type, _no_file_body = multipart({}, name="nofile")
_upload_type, _upload_body = multipart({"voice_file": ("../../outside.wav", b"RIFF" * 16)}, name="outside")
_vc_form_type, _vc_form_body = multipart({}, chunk_sec="30")

CASES = [
    # POST /api/v1/tts: bodies that are not a request.
    case("tts-truncated-json", "POST", TTS, 422, code=V, body=b'{"text": "Hi there."'),
    case("tts-garbage-json", "POST", TTS, 422, code=V, body=b"{not json"),
    case("tts-json-array", "POST", TTS, 422, code=V, send=["Hi there."]),
    case("tts-json-string", "POST", TTS, 422, code=V, send="Hi there."),
    case("tts-json-null", "POST", TTS, 422, code=V, body=b"null"),
    case("tts-empty-body", "POST", TTS, 422, code=V),
    case("tts-invalid-utf8", "POST", TTS, 400, body=b'{"text": "\xff\xfe bad"}'),
    # Wrong types, missing and unknown fields.
    case("tts-text-number", "POST", TTS, 422, code=V, param="text", send=tts(text=5)),
    case("tts-text-object", "POST", TTS, 422, code=V, param="text", send=tts(text={"a": 1})),
    case("tts-missing-text", "POST", TTS, 422, code=V, param="text", send={"seed": 1}),
    case("tts-unknown-field", "POST", TTS, 422, code=V, param="no_such_field", send=tts(no_such_field=1)),
    case(
        "tts-bool-as-word",
        "POST",
        TTS,
        422,
        code=V,
        param="bypass_whisper_checking",
        send=tts(bypass_whisper_checking="maybe"),
    ),
    case("tts-sample-rate-word", "POST", TTS, 422, code=V, param="sample_rate", send=tts(sample_rate="fast")),
    case(
        "tts-faster-whisper-off",
        "POST",
        TTS,
        422,
        code=V,
        param="use_faster_whisper",
        send=tts(use_faster_whisper=False),
    ),
    case("tts-project-and-folder-differ", "POST", TTS, 422, code=V, send=tts(project="a", folder="b")),
    # Out-of-range and non-finite numbers (Python's json reads NaN, Infinity and 1e999 as floats).
    case("tts-speed-too-fast", "POST", TTS, 422, code=V, param="speed_factor", send=tts(speed_factor=3.0)),
    case(
        "tts-speed-nan",
        "POST",
        TTS,
        422,
        code=V,
        param="speed_factor",
        body=b'{"text": "Hi there.", "speed_factor": NaN}',
    ),
    case(
        "tts-speed-infinity",
        "POST",
        TTS,
        422,
        code=V,
        param="speed_factor",
        body=b'{"text": "Hi there.", "speed_factor": Infinity}',
    ),
    case(
        "tts-level-minus-infinity",
        "POST",
        TTS,
        422,
        code=V,
        param="normalize_level",
        body=b'{"text": "Hi there.", "normalize_level": -Infinity}',
    ),
    case(
        "tts-seed-1e999", "POST", TTS, 422, code=V, param="seed", body=b'{"text": "Hi there.", "seed": 1e999}'
    ),
    case("tts-seed-negative", "POST", TTS, 422, code=V, param="seed", send=tts(seed=-1)),
    case("tts-seed-past-32-bits", "POST", TTS, 422, code=V, param="seed", send=tts(seed=2**64)),
    case(
        "tts-generations-over-limit",
        "POST",
        TTS,
        422,
        code=V,
        param="num_candidates_per_chunk",
        send=tts(num_candidates_per_chunk=10, max_attempts_per_candidate=10),
    ),
    # Text: too long, empty, nothing to say, a script the English engine cannot speak.
    case(
        "tts-text-over-server-limit", "POST", TTS, 422, code=V, param="text", send=tts(text=OVER_LIMIT_TEXT)
    ),
    case("tts-text-over-schema-limit", "POST", TTS, 422, code=V, param="text", send=tts(text="a" * 100_001)),
    case("tts-empty-text", "POST", TTS, 422, code=V, param="text", send=tts(text="")),
    case("tts-blank-text", "POST", TTS, 422, code=V, param="text", send=tts(text="  \n\t  ")),
    case(
        "tts-control-characters-only",
        "POST",
        TTS,
        422,
        code=V,
        param="text",
        send=tts(text="\x00\x01\x07\x1b\x7f"),
    ),
    case("tts-russian", "POST", TTS, 422, code=LANGUAGE, param="text", send=tts(text=RUSSIAN)),
    case("tts-chinese", "POST", TTS, 422, code=LANGUAGE, param="text", send=tts(text=CHINESE)),
    # Voices that are not there or point outside the library.
    case(
        "tts-unknown-voice",
        "POST",
        TTS,
        404,
        code=MISSING,
        param="reference_audio_filename",
        send=tts(reference_audio_filename="nobody-by-this-name"),
    ),
    case(
        "tts-voice-traversal",
        "POST",
        TTS,
        400,
        code=V,
        param="reference_audio_filename",
        send=tts(reference_audio_filename="../../etc/passwd"),
    ),
    case(
        "tts-voice-backslash-traversal",
        "POST",
        TTS,
        400,
        code=V,
        param="reference_audio_filename",
        send=tts(reference_audio_filename="..\\..\\secret.wav"),
    ),
    case(
        "tts-voice-url",
        "POST",
        TTS,
        400,
        code=V,
        param="reference_audio_filename",
        send=tts(reference_audio_filename="http://169.254.169.254/latest/meta-data"),
    ),
    # Formats and modes the server does not have.
    case(
        "tts-unknown-export-format",
        "POST",
        TTS,
        422,
        code=V,
        param="export_formats.0",
        send=tts(export_formats=["ogg"]),
    ),
    case(
        "tts-no-export-format", "POST", TTS, 422, code=V, param="export_formats", send=tts(export_formats=[])
    ),
    case(
        "tts-unknown-return-format",
        "POST",
        f"{TTS}?return_format=ogg",
        400,
        code=V,
        param="return_format",
        send=tts(),
    ),
    case(
        "tts-nul-return-format",
        "POST",
        f"{TTS}?return_format=%00",
        400,
        code=V,
        param="return_format",
        send=tts(),
    ),
    case(
        "tts-unknown-response-mode",
        "POST",
        f"{TTS}?response_mode=bogus",
        422,
        code=V,
        param="response_mode",
        send=tts(),
    ),
    case(
        "tts-whisper-model-not-loaded",
        "POST",
        TTS,
        400,
        code=V,
        param="whisper_model_name",
        send=tts(whisper_model_name="large-v3", bypass_whisper_checking=False),
    ),
    # Fields the Piper engine has no use for are refused, not silently ignored.
    *(
        case(f"tts-piper-{name}", "POST", TTS, 422, code=V, param=name, send=tts(**{name: value}))
        for name, value in (
            ("temperature", 0.5),
            ("exaggeration", 0.7),
            ("cfg_weight", 0.5),
            ("min_p", 0.1),
            ("top_p", 0.9),
            ("repetition_penalty", 1.3),
            ("normalize_lra", 9.0),
        )
    ),
    # An output folder outside the outputs folder: refused before any generation.
    case(
        "tts-project-traversal",
        "POST",
        f"{TTS}?response_mode=url",
        422,
        code=V,
        param="project",
        send={"text": "Hi there.", **EXPENSIVE, "project": "../x"},
        no_stage_calls=True,
    ),
    case(
        "tts-project-nested-traversal",
        "POST",
        f"{TTS}?response_mode=url",
        422,
        code=V,
        param="folder",
        send={"text": "Hi there.", **EXPENSIVE, "folder": "a/../../b"},
        no_stage_calls=True,
    ),
    # Bodies that are not JSON, or too big to read.
    case("tts-text-plain", "POST", TTS, 415, code=MEDIA, content_type="text/plain", send=tts()),
    case(
        "tts-form-urlencoded",
        "POST",
        TTS,
        415,
        code=MEDIA,
        content_type="application/x-www-form-urlencoded",
        body=b"text=Hi+there.",
    ),
    # No content type: read as JSON, as FastAPI does (requests' data=json.dumps(...) sends none).
    case("tts-no-content-type-not-json", "POST", TTS, 422, code=V, content_type=None, body=b"text=Hi+there."),
    case("tts-body-over-limit", "POST", TTS, 413, code=TOO_LARGE, send=tts(text=OVER_BODY_LIMIT)),
    case(
        "tts-declared-10-gb",
        "POST",
        TTS,
        413,
        code=TOO_LARGE,
        body=b'{"text": "Hi',
        headers=(("Content-Length", str(10 * 1024 * MIB)),),
        timeout_sec=10.0,
    ),
    # POST /v1/audio/speech.
    case("speech-truncated-json", "POST", SPEECH, 422, code=V, body=b'{"input": "Hi'),
    case("speech-json-array", "POST", SPEECH, 422, code=V, send=[speech()]),
    case("speech-missing-input", "POST", SPEECH, 422, code=V, param="input", send={"model": "tts-1"}),
    case("speech-input-number", "POST", SPEECH, 422, code=V, param="input", send=speech(input=42)),
    case("speech-unknown-field", "POST", SPEECH, 422, code=V, param="pitch", send=speech(pitch=2)),
    case(
        "speech-speed-nan",
        "POST",
        SPEECH,
        422,
        code=V,
        param="speed",
        body=b'{"input": "Hi there.", "speed": NaN}',
    ),
    case(
        "speech-speed-1e999",
        "POST",
        SPEECH,
        422,
        code=V,
        param="speed",
        body=b'{"input": "Hi there.", "speed": 1e999}',
    ),
    case("speech-speed-too-slow", "POST", SPEECH, 422, code=V, param="speed", send=speech(speed=0.1)),
    case(
        "speech-unknown-format",
        "POST",
        SPEECH,
        422,
        code=V,
        param="response_format",
        send=speech(response_format="ogg"),
    ),
    case(
        "speech-unknown-stream-format",
        "POST",
        SPEECH,
        422,
        code=V,
        param="stream_format",
        send=speech(stream_format="chunked"),
    ),
    case(
        "speech-unknown-voice",
        "POST",
        SPEECH,
        404,
        code=MISSING,
        param="voice",
        send=speech(voice="nobody-by-this-name"),
    ),
    case(
        "speech-voice-traversal",
        "POST",
        SPEECH,
        400,
        code=V,
        param="voice",
        send=speech(voice="../../etc/passwd"),
    ),
    case(
        "speech-voice-url",
        "POST",
        SPEECH,
        400,
        code=V,
        param="voice",
        send=speech(voice="http://169.254.169.254/x.wav"),
    ),
    case("speech-unknown-model", "POST", SPEECH, 422, code=V, param="model", send=speech(model="tts-9000")),
    case("speech-model-not-a-string", "POST", SPEECH, 422, code=V, param="model", send=speech(model=[1])),
    case(
        "speech-instructions",
        "POST",
        SPEECH,
        422,
        code=V,
        param="instructions",
        send=speech(instructions="Speak like a pirate."),
    ),
    case(
        "speech-input-over-server-limit",
        "POST",
        SPEECH,
        422,
        code=V,
        param="input",
        send=speech(input=OVER_LIMIT_TEXT),
    ),
    case("speech-blank-input", "POST", SPEECH, 422, code=V, param="input", send=speech(input=" \n ")),
    case(
        "speech-control-characters-only",
        "POST",
        SPEECH,
        422,
        code=V,
        param="input",
        send=speech(input="\x00\x08\x1b"),
    ),
    case("speech-russian", "POST", SPEECH, 422, code=LANGUAGE, param="input", send=speech(input=RUSSIAN)),
    case("speech-chinese", "POST", SPEECH, 422, code=LANGUAGE, param="input", send=speech(input=CHINESE)),
    case("speech-text-plain", "POST", SPEECH, 415, code=MEDIA, content_type="text/plain", send=speech()),
    case("speech-body-over-limit", "POST", SPEECH, 413, code=TOO_LARGE, send=speech(input=OVER_BODY_LIMIT)),
    # POST /api/v1/vc (the Piper app has no VC model: valid requests get 422 CAPABILITY_UNSUPPORTED).
    case("vc-garbage-json", "POST", VC, 400, code=V, param="body", body=b"{bad json"),
    case("vc-json-array", "POST", VC, 422, code=V, send=["in.wav"]),
    case("vc-missing-source", "POST", VC, 422, code=V, param="input_audio_source", send={"chunk_sec": 30}),
    case(
        "vc-chunk-nan",
        "POST",
        VC,
        422,
        code=V,
        param="chunk_sec",
        body=b'{"input_audio_source": "in.wav", "chunk_sec": NaN}',
    ),
    case(
        "vc-overlap-past-half-window",
        "POST",
        VC,
        422,
        code=V,
        send={"input_audio_source": "in.wav", "chunk_sec": 2, "overlap_sec": 1},
    ),
    case(
        "vc-unknown-export-format",
        "POST",
        VC,
        422,
        code=V,
        param="export_formats.0",
        send={"input_audio_source": "in.wav", "export_formats": ["ogg"]},
    ),
    case(
        "vc-without-vc-model",
        "POST",
        VC,
        422,
        code=CAPABILITY,
        param="input_audio_source",
        send={"input_audio_source": "in.wav"},
    ),
    case(
        "vc-form-without-vc-model",
        "POST",
        VC,
        422,
        code=CAPABILITY,
        param="input_audio",
        content_type=_vc_form_type,
        body=_vc_form_body,
    ),
    case(
        "vc-text-plain",
        "POST",
        VC,
        415,
        code=MEDIA,
        content_type="text/plain",
        send={"input_audio_source": "in.wav"},
    ),
    case("vc-body-over-limit", "POST", VC, 413, code=TOO_LARGE, send={"input_audio_source": OVER_BODY_LIMIT}),
    # Voice library and VC input uploads.
    case("voice-upload-json", "POST", "/api/v1/voice", 415, code=MEDIA, send={"name": "x"}),
    case(
        "voice-upload-urlencoded",
        "POST",
        "/api/v1/voice",
        415,
        code=MEDIA,
        content_type="application/x-www-form-urlencoded",
        body=b"name=x",
    ),
    case(
        "voice-upload-without-file",
        "POST",
        "/api/v1/voice",
        400,
        code=V,
        param="voice_file",
        content_type=_no_file_type,
        body=_no_file_body,
    ),
    case(
        "voice-upload-broken-multipart",
        "POST",
        "/api/v1/voice",
        400,
        code=V,
        param="voice_file",
        content_type="multipart/form-data; boundary=xyz",
        body=b"--xyz\r\nContent-Disposition: form-data; name=\r\n\r\nno end",
    ),
    case(
        "voice-upload-traversal-filename",
        "POST",
        "/api/v1/voice",
        400,
        code=V,
        param="voice_file",
        content_type=_upload_type,
        body=_upload_body,
    ),
    case(
        "voice-upload-declared-200-mb",
        "POST",
        "/api/v1/voice",
        413,
        code=TOO_LARGE,
        param="voice_file",
        content_type="multipart/form-data; boundary=xyz",
        body=b"--xyz\r\n",
        headers=(("Content-Length", str(200 * MIB)),),
        timeout_sec=10.0,
    ),
    case("vc-input-upload-json", "POST", "/api/v1/vc_input", 415, code=MEDIA, send={"text": "x"}),
    case(
        "vc-input-upload-declared-200-mb",
        "POST",
        "/api/v1/vc_input",
        413,
        code=TOO_LARGE,
        param="vc_input_file",
        content_type="multipart/form-data; boundary=xyz",
        body=b"--xyz\r\n",
        headers=(("Content-Length", str(200 * MIB)),),
        timeout_sec=10.0,
    ),
    # Listing and bulk deletion: query abuse, and filters that must never mean "everything".
    case("voices-page-zero", "GET", "/api/v1/voices?page=0", 422, code=V, param="page", content_type=None),
    case(
        "voices-page-not-a-number",
        "GET",
        "/api/v1/voices?page=abc",
        422,
        code=V,
        param="page",
        content_type=None,
    ),
    case(
        "voices-page-1e999", "GET", "/api/v1/voices?page=1e999", 422, code=V, param="page", content_type=None
    ),
    case(
        "voices-page-size-1000",
        "GET",
        "/api/v1/voices?page_size=1000",
        422,
        code=V,
        param="page_size",
        content_type=None,
    ),
    case(
        "voices-folder-traversal",
        "GET",
        "/api/v1/voices?folder=../..",
        400,
        code=V,
        param="folder",
        content_type=None,
    ),
    case(
        "voices-folder-absolute",
        "GET",
        "/api/v1/voices?folder=/etc",
        400,
        code=V,
        param="folder",
        content_type=None,
    ),
    case(
        "voices-bulk-delete-no-filter",
        "DELETE",
        "/api/v1/voices?confirm=true",
        400,
        code=V,
        param="folder",
        content_type=None,
    ),
    case(
        "voices-bulk-delete-empty-folder",
        "DELETE",
        "/api/v1/voices?confirm=true&folder=",
        400,
        code=V,
        param="folder",
        content_type=None,
    ),
    case(
        "voices-bulk-delete-root",
        "DELETE",
        "/api/v1/voices?confirm=true&folder=root",
        400,
        code=V,
        param="folder",
        content_type=None,
    ),
    case(
        "voices-bulk-delete-confirm-word",
        "DELETE",
        "/api/v1/voices?confirm=maybe&tag=x",
        422,
        code=V,
        param="confirm",
        content_type=None,
    ),
    case(
        "voices-bulk-delete-unknown-folder",
        "DELETE",
        "/api/v1/voices?confirm=true&folder=nowhere-at-all",
        404,
        code=MISSING,
        param="folder",
        content_type=None,
    ),
    case(
        "vc-inputs-page-size-zero",
        "GET",
        "/api/v1/vc_inputs?page_size=0",
        422,
        code=V,
        param="page_size",
        content_type=None,
    ),
    case(
        "vc-inputs-bulk-delete-no-filter",
        "DELETE",
        "/api/v1/vc_inputs?confirm=true",
        400,
        code=V,
        param="folder",
        content_type=None,
    ),
    # One voice: deletion without confirm, traversal in the path (sent raw), bad metadata.
    case(
        "voice-delete-without-confirm",
        "DELETE",
        f"/api/v1/voice/{PROBE_FILE}",
        400,
        code=V,
        param="confirm",
        content_type=None,
    ),
    case(
        "voice-delete-raw-traversal",
        "DELETE",
        "/api/v1/voice/../../etc/passwd?confirm=true",
        400,
        code=V,
        param="filename",
        content_type=None,
        seen_as="'../../etc'",
    ),
    case(
        "voice-delete-encoded-traversal",
        "DELETE",
        f"/api/v1/voice/%2e%2e/%2e%2e/{PROBE_FILE}?confirm=true",
        400,
        code=V,
        param="filename",
        content_type=None,
        seen_as="'../../probe'",
    ),
    case(
        "voice-delete-encoded-slash",
        "DELETE",
        f"/api/v1/voice/..%2f..%2f{PROBE_FILE}?confirm=true",
        400,
        code=V,
        param="filename",
        content_type=None,
        seen_as="'../../probe'",
    ),
    case(
        "voice-delete-unknown",
        "DELETE",
        "/api/v1/voice/nobody-here.wav?confirm=true",
        404,
        code=MISSING,
        param="filename",
        content_type=None,
    ),
    case(
        "voice-update-raw-traversal",
        "PUT",
        f"/api/v1/voice/../{PROBE_FILE}/metadata",
        400,
        code=V,
        param="filename",
        send={"description": "moved out"},
        seen_as="'../probe'",
    ),
    case(
        "voice-update-unknown",
        "PUT",
        "/api/v1/voice/nobody-here.wav/metadata",
        404,
        code=MISSING,
        param="filename",
        send={"description": "x"},
    ),
    case("voice-update-json-array", "PUT", f"/api/v1/voice/{PROBE_FILE}/metadata", 422, code=V, send=["x"]),
    case(
        "voice-update-tags-number",
        "PUT",
        f"/api/v1/voice/{PROBE_FILE}/metadata",
        422,
        code=V,
        param="tags",
        send={"tags": 5},
    ),
    case(
        "voice-update-empty-name",
        "PUT",
        f"/api/v1/voice/{PROBE_FILE}/metadata",
        422,
        code=V,
        param="name",
        send={"name": ""},
    ),
    case(
        "voice-update-default-nan",
        "PUT",
        f"/api/v1/voice/{PROBE_FILE}/metadata",
        422,
        code=V,
        param="default_parameters.temperature",
        body=b'{"default_parameters": {"temperature": NaN}}',
    ),
    case(
        "voice-update-unknown-default",
        "PUT",
        f"/api/v1/voice/{PROBE_FILE}/metadata",
        422,
        code=V,
        param="default_parameters.volume",
        send={"default_parameters": {"volume": 1}},
    ),
    case(
        "voice-update-folder-traversal",
        "PUT",
        f"/api/v1/voice/{PROBE_FILE}/metadata",
        400,
        code=V,
        param="folder_path",
        send={"folder_path": "../x"},
    ),
    case(
        "voice-update-text-plain",
        "PUT",
        f"/api/v1/voice/{PROBE_FILE}/metadata",
        415,
        code=MEDIA,
        content_type="text/plain",
        send={"description": "x"},
    ),
    case(
        "vc-input-delete-raw-traversal",
        "DELETE",
        "/api/v1/vc_input/../x.wav?confirm=true",
        400,
        code=V,
        param="filename",
        content_type=None,
        seen_as="'..'",
    ),
    # GET /outputs/{path}: traversal sent raw (the server must get the dots, and refuse them).
    case(
        "outputs-raw-traversal",
        "GET",
        "/outputs/../../etc/passwd",
        404,
        code=MISSING,
        content_type=None,
        seen_as="'../../etc/passwd'",
    ),
    case(
        "outputs-raw-repo-file",
        "GET",
        "/outputs/../serve_config.yaml",
        404,
        code=MISSING,
        content_type=None,
        seen_as="'../serve_config.yaml'",
    ),
    case(
        "outputs-encoded-traversal",
        "GET",
        "/outputs/%2e%2e/%2e%2e/etc/passwd",
        404,
        code=MISSING,
        content_type=None,
        seen_as="'../../etc/passwd'",
    ),
    case(
        "outputs-encoded-slash",
        "GET",
        "/outputs/..%2fsecret",
        404,
        code=MISSING,
        content_type=None,
        seen_as="'../secret'",
    ),
    case(
        "outputs-absolute",
        "GET",
        "/outputs//etc/passwd",
        404,
        code=MISSING,
        content_type=None,
        seen_as="'/etc/passwd'",
    ),
    case("outputs-nul-byte", "GET", "/outputs/%00", 404, code=MISSING, content_type=None),
    case("outputs-empty-path", "GET", "/outputs/", 404, code=MISSING, content_type=None),
    # Wrong methods, unknown routes.
    case("tts-get", "GET", TTS, 405, code="METHOD_NOT_ALLOWED", content_type=None),
    case("speech-put", "PUT", SPEECH, 405, code="METHOD_NOT_ALLOWED", send=speech()),
    case("models-delete", "DELETE", "/v1/models", 405, code="METHOD_NOT_ALLOWED", content_type=None),
    case("health-post", "POST", "/api/v1/health", 405, code="METHOD_NOT_ALLOWED", send={}),
    case("voices-patch", "PATCH", "/api/v1/voices", 405, code="METHOD_NOT_ALLOWED", send={}),
    case("outputs-post", "POST", "/outputs/x.wav", 405, code="METHOD_NOT_ALLOWED", send={}),
    case("unknown-route", "GET", "/api/v1/nope", 404, code="NOT_FOUND", content_type=None),
    case("unknown-openai-route", "GET", "/v1/audio/speak", 404, code="NOT_FOUND", content_type=None),
    case("unknown-api-version", "POST", "/api/v2/tts", 404, code="NOT_FOUND", send=tts()),
    # Header abuse.
    case(
        "header-12-kib",
        "GET",
        "/api/v1/nope",
        404,
        code="NOT_FOUND",
        content_type=None,
        headers=(("X-Junk", "j" * 12 * 1024),),
    ),
    case(
        "request-id-4-kib",
        "GET",
        "/api/v1/nope",
        404,
        code="NOT_FOUND",
        content_type=None,
        headers=(("X-Request-ID", "r" * 4096),),
    ),
    case(
        "request-id-markup",
        "GET",
        "/api/v1/nope",
        404,
        code="NOT_FOUND",
        content_type=None,
        headers=(("X-Request-ID", "<script>alert(1)</script> ' \" ;"),),
    ),
    # Not here: X-Request-Timeout-Seconds, which Serve's proxy honours before the app sees the
    # request (a plain-text 408); the README says to strip it at the front proxy.
]


@pytest.fixture(scope="module")
def port(serve_apps, piper_app) -> int:
    return serve_apps.port


@pytest.fixture(scope="module")
def serve_logs(piper_app) -> dict[Path, int]:
    """Where each Serve log file ended before the battery: what follows is the battery's."""
    return {path: path.stat().st_size for path in _serve_log_dir().glob("*.log")}


@pytest.fixture(scope="module")
def probe_voice(client, data_dirs, serve_logs) -> Iterator[dict[str, Any]]:
    """One stored voice the battery aims at; it must come out unchanged."""
    response = client.post(
        "/api/v1/voice",
        files={"voice_file": ("probe.wav", _tone_wav(2.0), "audio/wav")},
        data={"name": PROBE_NAME, "folder_path": PROBE_FOLDER, "tags": "probe"},
    )
    assert response.status_code == 200, response.text
    stored = {
        "view": response.json()["voice_metadata"],
        "bytes": (data_dirs["voices"] / PROBE_FILE).read_bytes(),
        "voices": _listing(client, "/api/v1/voices", "voices"),
        "vc_inputs": _listing(client, "/api/v1/vc_inputs", "files"),
    }
    yield stored
    client.delete(f"/api/v1/voice/{PROBE_FILE}", params={"confirm": "true"})


@pytest.mark.parametrize("hostile", CASES)
def test_hostile_request_gets_the_contract_answer(port, probe_voice, hostile: Hostile, request):
    request_id = f"hostile-{request.node.callspec.id}"
    headers = dict(hostile.headers)
    headers.setdefault("X-Request-ID", request_id)
    if hostile.content_type is not None:
        headers.setdefault("Content-Type", hostile.content_type)
    try:
        answer = send_raw(
            port,
            hostile.method,
            hostile.target,
            hostile.body,
            tuple(headers.items()),
            hostile.timeout_sec,
        )
    except TimeoutError:
        pytest.fail(f"no answer within {hostile.timeout_sec:.0f} s")
    assert answer.status < 500, f"{answer.status}: {answer.body[:500]!r}\n{_log_lines(request_id)}"
    assert answer.status == hostile.status, answer.body[:1000]
    assert answer.headers.get("content-type", "").startswith("application/json"), answer.headers
    body = answer.json()
    assert body["success"] is False, body
    error = body["error"]
    assert set(error) >= {"message", "type", "code", "param"}, body
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["type"], str) and error["type"], body
    assert isinstance(error["message"], str) and error["message"], body
    if hostile.code is not None:
        assert error["code"] == hostile.code, body
    if hostile.param is not None:
        assert error["param"] == hostile.param, body
    if hostile.seen_as is not None:
        assert hostile.seen_as in error["message"], f"the server did not get the path as sent: {body}"
    if hostile.no_stage_calls:
        assert not _stage_calls(request_id), f"work was done first:\n{_stage_calls(request_id)}"
    assert isinstance(body.get("request_id"), str) and body["request_id"], body
    # Serve's proxy takes X-Request-ID as the request's id as sent (a 4 KiB one too).
    assert body["request_id"] == headers["X-Request-ID"], body


def test_control_characters_inside_text_are_spoken(client):
    text = "Hello\x00 there,\x07 my\x1b friend.\x7f"
    for path, body in (("/api/v1/tts", {"text": text, **CHEAP}), (SPEECH, speech(input=text))):
        request_id = f"hostile-control-characters-inside{path.replace('/', '-')}"
        response = client.post(path, json=body, headers={"X-Request-ID": request_id})
        assert response.status_code == 200, f"{response.text}\n{_log_lines(request_id)}"
        assert decode_audio(response.content).duration_sec > 0.5


def test_a_body_cut_short_by_the_client_leaves_the_server_serving(port, client):
    for target in (TTS, "/api/v1/voice"):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.putrequest("POST", target)
        connection.putheader("Content-Type", JSON if target == TTS else "multipart/form-data; boundary=xyz")
        connection.putheader("Content-Length", "100000")
        connection.putheader("X-Request-ID", f"hostile-cut-short-{target.rsplit('/', 1)[1]}")
        connection.endheaders(b'{"text": "Hi' if target == TTS else b"--xyz\r\n")
        connection.close()
    time.sleep(1.0)
    assert client.get("/api/v1/health").status_code == 200
    assert client.get("/v1/models").status_code == 200


@pytest.fixture
def short_body_timeout(serve_apps, data_dirs, piper_app) -> Iterator[float]:
    """limits.body_timeout_sec cut to a few seconds through the Ingress user_config (no restart)."""
    config = app_config(serve_apps.port, data_dirs, engine="piper")
    serve_apps.deploy(
        with_ingress_user_config(config, {"limits": {"body_timeout_sec": SHORT_BODY_TIMEOUT_SEC}})
    )
    try:
        yield SHORT_BODY_TIMEOUT_SEC
    finally:
        serve_apps.deploy(config)


@pytest.mark.parametrize(
    ("target", "content_type", "first_bytes"),
    [
        (TTS, JSON, b'{"text": "Hi'),
        ("/api/v1/voice", "multipart/form-data; boundary=xyz", b"--xyz\r\n"),
    ],
    ids=["json", "multipart"],
)
def test_a_stalled_body_gets_408_after_the_body_timeout(
    port, short_body_timeout, target, content_type, first_bytes
):
    request_id = f"hostile-stalled-{target.rsplit('/', 1)[1]}"
    headers = (("Content-Type", content_type), ("Content-Length", "4096"), ("X-Request-ID", request_id))
    try:
        answer = send_raw(port, "POST", target, first_bytes, headers, timeout_sec=short_body_timeout + 15)
    except TimeoutError:
        pytest.fail(f"no answer {short_body_timeout + 15:.0f} s after the body stalled")
    assert answer.status == 408, answer.body[:500]
    assert short_body_timeout - 0.5 <= answer.elapsed_sec <= short_body_timeout + 5, answer.elapsed_sec
    body = answer.json()
    assert body["success"] is False and body["error"]["code"] == "REQUEST_TIMEOUT", body
    assert body["request_id"] == request_id


def test_after_the_battery_the_service_speaks_and_lost_nothing(client, probe_voice, data_dirs, serve_logs):
    native = client.post("/api/v1/tts", json={"text": SHORT_SENTENCE, **CHEAP})
    assert native.status_code == 200, native.text
    assert decode_audio(native.content).duration_sec > 1.5
    openai = client.post("/v1/audio/speech", json={"input": SHORT_SENTENCE, "response_format": "mp3"})
    assert openai.status_code == 200, openai.text
    assert decode_audio(openai.content).duration_sec > 1.5

    (view,) = client.get("/api/v1/voices", params={"folder": PROBE_FOLDER}).json()["voices"]
    assert view == probe_voice["view"], "the stored voice's metadata changed"
    assert (data_dirs["voices"] / PROBE_FILE).read_bytes() == probe_voice["bytes"]
    assert _listing(client, "/api/v1/voices", "voices") == probe_voice["voices"]
    assert _listing(client, "/api/v1/vc_inputs", "files") == probe_voice["vc_inputs"]

    errors = _server_errors(serve_logs)
    assert not errors, "5xx answers in the Serve logs:\n" + "\n".join(errors)


# Helpers.


def _tone_wav(seconds: float) -> bytes:
    rate = 22050
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t), rate, format="WAV")
    return buffer.getvalue()


def _listing(client: httpx.Client, path: str, key: str) -> list[str]:
    return sorted(item["filename"] for item in client.get(path, params={"page_size": 100}).json()[key])


def _serve_log_dir() -> Path:
    from ray._private import worker

    return Path(worker._global_node.get_session_dir_path()) / "logs" / "serve"


def _stage_calls(request_id: str) -> list[str]:
    """Calls the pipeline's stage replicas logged for a request (Serve's "CALL split OK" lines)."""
    return [
        line
        for path in sorted(_serve_log_dir().glob("replica_*.log"))
        if "_Ingress_" not in path.name
        for line in path.read_text(errors="replace").splitlines()
        if request_id in line and " CALL " in line and " CALL report " not in line  # engine info
    ]


def _log_lines(request_id: str, context_lines: int = 80) -> str:
    """What the Serve replica logs say about one request: its first error and the traceback after."""
    found: list[str] = []
    for path in sorted(_serve_log_dir().glob("replica_*.log")):
        lines = path.read_text(errors="replace").splitlines()
        mentions = [index for index, line in enumerate(lines) if request_id in line]
        failures = [index for index in mentions if "ERROR" in lines[index] or "failed" in lines[index]]
        if not mentions:
            continue
        start = (failures or mentions)[0]
        found.append(f"--- {path.name}")
        found.extend(line for line in lines[start : start + context_lines] if not _NOISE.search(line))
    return "\n".join(found) or f"(nothing about {request_id} in {_serve_log_dir()})"


# Serve's own frames and caret lines: the traceback is readable without them.
_NOISE = re.compile(r"ray/serve/_private|anyio|concurrent/futures|asyncio/|^\s*[\^~]+\s*$")
# Access lines as Serve logs them: "<request id> -- POST /api/v1/tts 500 46.2ms".
_SERVER_ERROR_LINE = re.compile(r"(\S+) -- (?:GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS) \S+ 5\d\d ")


def _server_errors(offsets: dict[Path, int]) -> list[str]:
    """The 5xx answers logged since ``offsets``, each with what its replicas logged about it."""
    request_ids: dict[str, str] = {}
    for path in sorted(_serve_log_dir().glob("*.log")):
        with path.open("rb") as stream:
            stream.seek(offsets.get(path, 0))
            text = stream.read().decode(errors="replace")
        for line in text.splitlines():
            if match := _SERVER_ERROR_LINE.search(line):
                request_ids.setdefault(match.group(1), line)
    return [f"{line}\n{_log_lines(request_id)}" for request_id, line in request_ids.items()]
