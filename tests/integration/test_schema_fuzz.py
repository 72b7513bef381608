"""Schemathesis against the live Piper app's OpenAPI spec: no generated request gets a 5xx.

Every operation of ``/openapi.json`` is fuzzed with valid and invalid data (schemathesis' positive
and negative modes) under ``not_a_server_error`` and our error-shape check. Bounded in time: a few
examples per operation and mode, each pair with its share of the time budget. Texts short enough
to be spoken are cut to one short sentence and quality settings to one candidate (longer texts are
refused by the server's limit before any work, so they stay); the voice library and VC inputs are
restored after, since bulk deletes with random filters may delete what other tests stored.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 30  # per operation and mode; the time budget usually ends it first
BUDGET_SEC = 80.0
MIN_OPERATIONS = 17  # in the app's /openapi.json; each gets a share of the budget
SPOKEN_CHARS = 60  # texts up to the server's limit are spoken: keep them to one short sentence
SERVER_TEXT_LIMIT = 10_000
# Quality settings cut to one candidate when inside the schema's range (cheap value, schema maximum).
CHEAP_QUALITY = {"num_candidates_per_chunk": (1, 10), "max_attempts_per_candidate": (1, 10)}


@pytest.fixture(scope="module")
def restored_libraries(data_dirs) -> Iterator[None]:
    """The voice library and VC inputs as they were before the fuzz, whatever it deleted or moved."""
    saved = {name: _snapshot(data_dirs[name]) for name in ("voices", "vc_inputs")}
    yield
    for name, files in saved.items():
        _restore(data_dirs[name], files)


@pytest.fixture(scope="module")
def live_schema(piper_app, restored_libraries):
    config = schemathesis.Config.from_dict({"base-url": piper_app, "request-timeout": 60})
    return schemathesis.openapi.from_url(f"{piper_app}/openapi.json", config=config)


@schemathesis.check
def error_shape(ctx, response, case) -> bool | None:
    """Every 4xx the app answers carries the one error shape."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert body["success"] is False, body
        assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
        assert "request_id" in body, body
    return None


def test_no_generated_request_gets_a_server_error(live_schema, subtests):
    # One subtest per operation and mode. schemathesis.pytest.from_fixture would make these
    # separate tests, but its lazy loader fails under pytest 9 ('Function' has no '_nodeid').
    operations = []
    for result in live_schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operations.append(result.ok())
    assert len(operations) >= MIN_OPERATIONS, [operation.label for operation in operations]
    share_sec = BUDGET_SEC / (len(operations) * len(GenerationMode))
    for operation in operations:
        for mode in GenerationMode:
            with subtests.test(msg=f"{operation.label} ({mode.value})"):
                _fuzz(operation, mode, time.monotonic() + share_sec)


def _fuzz(operation, mode: GenerationMode, deadline: float) -> None:
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case) -> None:
        if time.monotonic() > deadline:
            return  # this operation's share of the budget is spent
        _keep_cheap(case)
        case.call_and_validate(checks=[not_a_server_error, error_shape])

    try:
        fuzz()
    except Unsatisfiable:
        # Nothing in this operation can be made invalid (no parameters, or a body the route
        # parses itself, undeclared in the spec): the negative mode has no case to send.
        if mode is not GenerationMode.NEGATIVE:
            raise


def _keep_cheap(case) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    for field in ("text", "input"):
        text = body.get(field)
        if isinstance(text, str) and SPOKEN_CHARS < len(text) <= SERVER_TEXT_LIMIT:
            body[field] = text[:SPOKEN_CHARS]
    for name, (cheap, most) in CHEAP_QUALITY.items():
        value = body.get(name)
        # Only values the schema accepts: an out-of-range one is a negative case, refused at once.
        if isinstance(value, int) and not isinstance(value, bool) and cheap < value <= most:
            body[name] = cheap


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    }


def _restore(root: Path, files: dict[str, bytes]) -> None:
    for child in root.iterdir():
        if child.name.startswith("."):  # the store's own .staging and .locks
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
