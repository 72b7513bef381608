"""Stage calls survive a replica dying under them (retried), and do not retry anything else."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from deployments import calls
from deployments.calls import resilient
from pipeline.errors import InvalidRequest


class FlakyMethod:
    def __init__(self, failures: list[Exception]):
        self.failures = list(failures)
        self.calls = 0

    def remote(self, *args):
        self.calls += 1
        failure = self.failures.pop(0) if self.failures else None

        async def answer():
            if failure is not None:
                raise failure
            return ("ok", *args)

        return answer()


class FakeHandle:
    deployment_name = "TTS"

    def __init__(self, method: FlakyMethod):
        self.synthesize = method


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(calls, "RETRY_BACKOFF_SEC", 0.0)


def test_a_call_whose_replica_died_is_retried_on_another():
    method = FlakyMethod([ActorDiedError(), ActorUnavailableError("restarting", b"\0" * 16)])
    assert asyncio.run(resilient(FakeHandle(method), "synthesize")("text")) == ("ok", "text")
    assert method.calls == 3


def test_retries_stop_after_the_last_attempt():
    method = FlakyMethod([ActorDiedError()] * calls.STAGE_CALL_ATTEMPTS)
    with pytest.raises(ActorDiedError):
        asyncio.run(resilient(FakeHandle(method), "synthesize")("text"))
    assert method.calls == calls.STAGE_CALL_ATTEMPTS


def test_user_errors_are_not_retried():
    method = FlakyMethod([InvalidRequest("bad", param="text")])
    with pytest.raises(InvalidRequest):
        asyncio.run(resilient(FakeHandle(method), "synthesize")("text"))
    assert method.calls == 1
