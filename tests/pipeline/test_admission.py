"""The admission gate runs a bounded number of requests, queues a bounded number, refuses the rest."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.admission import AdmissionGate, DrainingGate
from pipeline.errors import Overloaded


def test_past_active_and_waiting_requests_are_refused_at_once_and_the_rest_all_run():
    gate = AdmissionGate(max_active=2, max_waiting=1, retry_after_sec=3)
    release = asyncio.Event()
    finished: list[int] = []

    async def request(number: int) -> str:
        try:
            async with gate.admit():
                await release.wait()
                finished.append(number)
                return "ok"
        except Overloaded as refused:
            assert refused.headers() == {"Retry-After": "3"}
            return "503"

    async def scenario() -> list[str]:
        tasks = [asyncio.create_task(request(number)) for number in range(6)]
        await asyncio.sleep(0.01)
        assert gate.snapshot() == {
            "active": 2,
            "waiting": 1,
            "max_active": 2,
            "max_waiting": 1,
            "refused": 3,
        }
        release.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(scenario()) == ["ok", "ok", "ok", "503", "503", "503"]
    assert finished == [0, 1, 2], "the waiting request runs once a slot frees"
    assert gate.snapshot()["active"] == gate.snapshot()["waiting"] == 0


def test_a_request_that_fails_or_is_cancelled_frees_its_slot():
    gate = AdmissionGate(max_active=1, max_waiting=1, retry_after_sec=1)

    async def failing() -> None:
        async with gate.admit():
            raise ValueError("engine failure")

    async def scenario() -> None:
        with pytest.raises(ValueError):
            await failing()
        async with gate.admit():
            waiter = asyncio.create_task(gate.acquire())  # a client that gives up while waiting
            await asyncio.sleep(0.01)
            assert gate.snapshot()["waiting"] == 1
            waiter.cancel()
            await asyncio.sleep(0.01)
        async with gate.admit():
            assert gate.snapshot() == {**gate.snapshot(), "active": 1, "waiting": 0}

    asyncio.run(scenario())
    assert gate.snapshot()["active"] == 0


def test_a_draining_gate_refuses_new_requests_while_admitted_ones_finish_in_the_old_gate():
    gate = AdmissionGate(max_active=2, max_waiting=2, retry_after_sec=5)
    release = asyncio.Event()

    async def admitted() -> None:
        async with gate.admit():
            await release.wait()

    async def scenario() -> tuple[Overloaded, dict, dict]:
        running = asyncio.create_task(admitted())
        await asyncio.sleep(0.01)
        draining = DrainingGate(gate, retry_after_sec=5)
        with pytest.raises(Overloaded) as refused:
            async with draining.admit():
                raise AssertionError("a draining gate admits nothing")
        during = draining.snapshot()
        release.set()
        await running
        return refused.value, during, draining.snapshot()

    refused, during, after = asyncio.run(scenario())
    assert (refused.status_code, refused.code, refused.headers()) == (
        503,
        "SERVER_DRAINING",
        {"Retry-After": "5"},
    )
    assert during["active"] == 1 and during["draining"] is True and during["refused_draining"] == 1
    assert after["active"] == 0
