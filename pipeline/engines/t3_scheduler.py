"""The T3 engine loop of a replica: one thread owns the model and decodes every request in batches.

Why our own loop and not ``@serve.batch``: ``serve.batch`` gathers calls into one batch and
answers them together, so a 40 s chunk would hold back the 2 s chunks batched with it, and a
request could only join when the whole batch is done. Here rows join and leave between decode
steps (continuous batching): a queued request is prefilled and joins at the next step, a finished
one leaves at once, and a cancelled one (its future cancelled: a client gone, a sibling chunk
failed) is dropped at the next step, its rows and token budget freed.

Admission is bounded twice: by requests (``max_batch_size``) and by tokens
(``max_batch_tokens``: the sum over running requests of prompt length + token cap, i.e. the
key/value positions they may hold at most, which is what bounds the replica's cache memory).
Both can change while the loop runs (:meth:`T3Scheduler.configure`, from the deployment's
``user_config``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.engines.base import SynthesisParams

if TYPE_CHECKING:  # torch and chatterbox load with the engine, not with this module
    import torch

    from pipeline.engines.t3_batching import BatchedT3, DecodeState, SpeechTokens

logger = logging.getLogger(__name__)

TokenListener = Callable[[int], None]


@dataclass(frozen=True)
class BatchLimits:
    """How much the loop decodes at once; see the module docstring."""

    max_batch_size: int = 8
    max_batch_tokens: int = 16_384

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_batch_tokens < 1:
            raise ValueError("max_batch_size and max_batch_tokens must be positive")


@dataclass
class DecodeJob:
    """One request for speech tokens. ``future`` gets the SpeechTokens; cancelling it frees the rows.

    ``listener``, if given, hears each valid speech token as it is sampled (from the loop's
    thread; it must be quick), which is what incremental audio renders from.
    """

    t3_cond: object
    text_tokens: torch.Tensor
    params: SynthesisParams
    max_new_tokens: int
    generator: torch.Generator
    listener: TokenListener | None = None
    future: Future[SpeechTokens] = field(default_factory=Future)

    @property
    def reserved_tokens(self) -> int:
        """Key/value positions it may hold: the prompt (conditioning + text + starts) + its cap."""
        return self.text_tokens.size(1) + self.max_new_tokens + 64


class T3Scheduler:
    """Feeds :class:`BatchedT3` from a queue; thread-safe ``submit`` from any thread."""

    def __init__(self, decoder: BatchedT3, limits: BatchLimits) -> None:
        self._decoder = decoder
        self._limits = limits
        self._vocab_limit = decoder.vocab_limit
        self._stop_token = decoder.t3.hp.stop_speech_token
        self._queue: deque[DecodeJob] = deque()
        self._wakeup = threading.Condition()
        self._running: list[tuple[DecodeJob, DecodeState]] = []
        self._counts: Counter[str] = Counter()
        self._peak_batch = 0
        self._thread: threading.Thread | None = None

    @property
    def limits(self) -> BatchLimits:
        return self._limits

    def configure(self, limits: BatchLimits) -> None:
        """New limits apply from the next admission; running rows are never evicted."""
        with self._wakeup:
            self._limits = limits
            self._wakeup.notify()

    def submit(self, job: DecodeJob) -> Future[SpeechTokens]:
        with self._wakeup:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="t3-engine-loop", daemon=True)
                self._thread.start()
            self._queue.append(job)
            self._counts["submitted"] += 1
            self._wakeup.notify()
        return job.future

    def snapshot(self) -> dict[str, int]:
        """The loop's state and counters (health, metrics and tests read these)."""
        with self._wakeup:
            running = [job for job, _ in self._running]
            return {
                "running_requests": len(running),
                "queued_requests": len(self._queue),
                "reserved_tokens": sum(job.reserved_tokens for job in running),
                "max_batch_size": self._limits.max_batch_size,
                "max_batch_tokens": self._limits.max_batch_tokens,
                "peak_batch": self._peak_batch,
                **{f"{name}_total": count for name, count in sorted(self._counts.items())},
            }

    def _loop(self) -> None:
        while True:
            joining = self._admit()
            try:
                self._join(joining)
                self._decode_one_step()
            except Exception as error:  # a bug or device failure: fail the batch, keep the loop
                logger.exception("T3 batch step failed; failing its %d requests", len(self._running))
                for job, _ in self._running:
                    _fail(job, error)
                self._set_running([])

    def _admit(self) -> list[DecodeJob]:
        """Wait for work; take queued jobs while the limits allow (at least one if idle)."""
        with self._wakeup:
            while not self._queue and not self._running:
                self._wakeup.wait()
            joining: list[DecodeJob] = []
            reserved = sum(job.reserved_tokens for job, _ in self._running)
            while self._queue:
                job = self._queue[0]
                if job.future.cancelled():
                    self._queue.popleft()
                    self._counts["cancelled_queued"] += 1
                    continue
                busy = len(self._running) + len(joining)
                fits = (
                    busy < self._limits.max_batch_size
                    and reserved + job.reserved_tokens <= self._limits.max_batch_tokens
                )
                if not fits and busy > 0:
                    break
                joining.append(self._queue.popleft())
                reserved += job.reserved_tokens
            return joining

    def _join(self, joining: list[DecodeJob]) -> None:
        running = list(self._running)
        for job in joining:
            try:
                state = self._decoder.prefill(
                    job.t3_cond, job.text_tokens, job.params, job.max_new_tokens, job.generator
                )
            except Exception as error:  # this request's own input failed: the others go on
                _fail(job, error)
                continue
            running.append((job, state))
        self._set_running(running)

    def _decode_one_step(self) -> None:
        """Drop cancelled rows, sample every row, let finished rows leave, run the rest one step."""
        with self._wakeup:  # one update, so a snapshot never counts a row both gone and running
            running = [(job, state) for job, state in self._running if not job.future.cancelled()]
            self._counts["cancelled_running"] += len(self._running) - len(running)
            self._running = running
        if not running:
            return
        self._peak_batch = max(self._peak_batch, len(running))
        tokens = self._decoder.sample([state for _, state in running])
        going_on = []
        for (job, state), token in zip(running, tokens, strict=True):
            if token != self._stop_token and job.listener is not None and token < self._vocab_limit:
                job.listener(token)
            if token == self._stop_token or state.steps >= job.max_new_tokens:
                _resolve(job, self._decoder.result(state))
            else:
                going_on.append((job, state))
        with self._wakeup:
            self._counts["finished"] += len(running) - len(going_on)
            self._running = going_on
        if going_on:
            self._decoder.step([state for _, state in going_on])
        with self._wakeup:
            self._counts["steps"] += 1

    def _set_running(self, running: list[tuple[DecodeJob, DecodeState]]) -> None:
        with self._wakeup:
            self._running = running


def _resolve(job: DecodeJob, result: SpeechTokens) -> None:
    # The caller may cancel at any moment, between our check and this call too.
    with contextlib.suppress(InvalidStateError):
        job.future.set_result(result)


def _fail(job: DecodeJob, error: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):
        job.future.set_exception(error)
