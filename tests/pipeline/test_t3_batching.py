"""T3's engine loop on the random checkpoint: continuous batching, cancellation, limits, determinism.

The loop's own state (:meth:`T3Scheduler.snapshot`, the tokens each job's listener hears) is what
these tests observe, never timings: a cancelled job must leave the batch at the next decode step,
a short job must finish while a long one goes on, and a seed must give the same tokens and audio
alone or in any batch.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from pipeline.engines.base import SynthesisParams
from pipeline.engines.chatterbox import ChatterboxEngine, ChatterboxSettings
from pipeline.engines.t3_scheduler import BatchLimits, DecodeJob, T3Scheduler

pytestmark = pytest.mark.slow

LONG_CAP = 400  # random weights never stop by themselves: a job runs to its cap
SHORT_CAP = 6


@pytest.fixture(scope="module")
def engine(chatterbox_checkpoint: Path) -> ChatterboxEngine:
    return ChatterboxEngine.load(
        ChatterboxSettings(
            checkpoint_dir=str(chatterbox_checkpoint), cpu_threads=1, max_new_tokens_cap=LONG_CAP
        )
    )


@pytest.fixture
def scheduler(engine: ChatterboxEngine) -> T3Scheduler:
    """A loop of its own per test (the engine's T3, fresh counters and limits)."""
    from pipeline.engines.t3_batching import BatchedT3

    return T3Scheduler(BatchedT3(engine.model.t3), BatchLimits(max_batch_size=8))


class Heard:
    """A job's listener: counts the tokens it is told of and lets a test wait for the n-th."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self._changed = threading.Condition()

    def __call__(self, token: int) -> None:
        with self._changed:
            self.tokens.append(token)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 120) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.tokens) >= count, timeout), self.tokens


def job(engine: ChatterboxEngine, cap: int, seed: int = 1, text: str = "Hello there.", **params) -> DecodeJob:
    import torch

    model = engine.model
    return DecodeJob(
        model.builtin_voice.for_request(0.5),
        model.text_tokens(text),
        SynthesisParams(seed=seed, **params),
        cap,
        torch.Generator().manual_seed(seed),
        listener=Heard(),
    )


def wait_until(scheduler: T3Scheduler, condition, timeout: float = 120) -> dict[str, int]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        state = scheduler.snapshot()
        if condition(state):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.02)


def test_a_short_job_joins_a_running_one_and_leaves_before_it(engine, scheduler) -> None:
    long = job(engine, LONG_CAP, seed=1)
    scheduler.submit(long)
    long.listener.wait_for(3)  # the long job is decoding
    short = job(engine, SHORT_CAP, seed=2)
    scheduler.submit(short)
    tokens = short.future.result(timeout=120)
    heard_by_long = len(long.listener.tokens)
    assert tokens.sampled == SHORT_CAP and tokens.peak_batch == 2
    assert heard_by_long < LONG_CAP and not long.future.done(), "the short job waited for the long one"
    long.future.cancel()
    wait_until(scheduler, lambda s: s["running_requests"] == 0)


def test_a_cancelled_job_leaves_the_batch_at_the_next_step(engine, scheduler) -> None:
    stays, leaves = job(engine, LONG_CAP, seed=1), job(engine, LONG_CAP, seed=2)
    scheduler.submit(stays)
    scheduler.submit(leaves)
    leaves.listener.wait_for(4)
    assert scheduler.snapshot()["running_requests"] == 2
    reserved_both = scheduler.snapshot()["reserved_tokens"]
    assert leaves.future.cancel()
    heard_at_cancel = len(leaves.listener.tokens)
    state = wait_until(scheduler, lambda s: s.get("cancelled_running_total", 0) == 1)
    assert state["running_requests"] == 1
    assert state["reserved_tokens"] == reserved_both - leaves.reserved_tokens
    # At most the step that was already running when it was cancelled.
    assert len(leaves.listener.tokens) <= heard_at_cancel + 1
    stays.listener.wait_for(len(stays.listener.tokens) + 3)  # the other job goes on decoding
    stays.future.cancel()
    wait_until(scheduler, lambda s: s["running_requests"] == 0)


def test_a_job_cancelled_in_the_queue_never_runs(engine, scheduler) -> None:
    scheduler.configure(BatchLimits(max_batch_size=1))
    running, queued = job(engine, LONG_CAP, seed=1), job(engine, LONG_CAP, seed=2)
    scheduler.submit(running)
    scheduler.submit(queued)
    running.listener.wait_for(2)
    assert scheduler.snapshot()["queued_requests"] == 1
    queued.future.cancel()
    running.future.cancel()
    state = wait_until(scheduler, lambda s: s["running_requests"] == 0 and s["queued_requests"] == 0)
    assert state["cancelled_queued_total"] == 1 and queued.listener.tokens == []


def test_batch_size_and_token_limits_hold_and_change_at_runtime(engine, scheduler) -> None:
    scheduler.configure(BatchLimits(max_batch_size=2))
    jobs = [job(engine, 30, seed=seed) for seed in range(3)]
    for each in jobs:
        scheduler.submit(each)
    jobs[0].listener.wait_for(2)
    assert scheduler.snapshot()["running_requests"] == 2
    assert scheduler.snapshot()["queued_requests"] == 1
    for each in jobs:
        each.future.result(timeout=120)
    assert scheduler.snapshot()["peak_batch"] == 2

    # A token budget that fits one job's prompt + cap but not two.
    one_job = jobs[0].reserved_tokens
    scheduler.configure(BatchLimits(max_batch_size=8, max_batch_tokens=one_job + 10))
    more = [job(engine, 30, seed=seed) for seed in range(2)]
    for each in more:
        scheduler.submit(each)
    more[0].listener.wait_for(2)
    assert scheduler.snapshot()["running_requests"] == 1
    assert scheduler.snapshot()["reserved_tokens"] <= one_job + 10
    for each in more:
        each.future.result(timeout=120)

    scheduler.configure(BatchLimits(max_batch_size=4))
    last = [job(engine, 10, seed=seed) for seed in range(4)]
    for each in last:
        scheduler.submit(each)
    assert max(each.future.result(timeout=120).peak_batch for each in last) == 4


def test_a_seed_gives_the_same_tokens_alone_and_in_any_batch(engine, scheduler) -> None:
    """Different texts, settings and join times: each job's tokens equal its own alone."""
    settings = [
        {"seed": 5, "text": "Hello there."},
        {"seed": 6, "text": "A rather longer sentence for the batch.", "temperature": 0.6, "top_p": 0.8},
        {"seed": 7, "text": "Hi.", "cfg_weight": 0.0, "min_p": 0.2},
        {"seed": 8, "text": "Another one joins later.", "repetition_penalty": 1.6, "exaggeration": 0.9},
        {"seed": 9, "text": "And a fifth.", "cfg_weight": 0.3},
    ]
    alone = [scheduler.submit(job(engine, 20, **each)).result(timeout=120).tokens for each in settings]
    batched = [job(engine, 20, **each) for each in settings]
    for index, each in enumerate(batched):
        scheduler.submit(each)
        if index in (1, 3):  # the next ones join a batch that is mid-way
            each.listener.wait_for(3)
    results = [each.future.result(timeout=120) for each in batched]
    assert max(result.peak_batch for result in results) >= 3
    for setting, solo, together in zip(settings, alone, results, strict=True):
        assert together.tokens.equal(solo), f"seed {setting['seed']} changed in a batch"


def test_a_failing_prefill_fails_only_its_own_job(engine, scheduler) -> None:
    import torch

    good = job(engine, 10, seed=1)
    bad = job(engine, 10, seed=2)
    bad.text_tokens = torch.full((1, 4), 10**6, dtype=torch.long)  # outside T3's text vocabulary
    scheduler.submit(good)
    scheduler.submit(bad)
    with pytest.raises(IndexError):
        bad.future.result(timeout=120)
    assert good.future.result(timeout=120).sampled == 10


def test_cancelling_the_awaiting_task_frees_the_rows(engine) -> None:
    """The path a Serve replica takes: its request task is cancelled (client gone)."""
    before = engine.scheduler.snapshot().get("cancelled_running_total", 0)
    # A cap far above the fixture's: a job long enough to be cancelled mid-way.
    text = "A long text " * 20

    async def cancel_mid_way() -> None:
        task = asyncio.ensure_future(engine.synthesize_async(text, None, SynthesisParams(seed=1)))
        while engine.scheduler.snapshot()["running_requests"] == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_mid_way())
    wait_until(engine.scheduler, lambda s: s.get("cancelled_running_total", 0) == before + 1)
    assert engine.scheduler.snapshot()["running_requests"] == 0
