"""The TTS deployment's runtime batching settings (its user_config), on a T3 loop without a model."""

from __future__ import annotations

from types import SimpleNamespace

import pydantic
import pytest

from deployments.tts import TTS
from pipeline.engines.t3_scheduler import BatchLimits, T3Scheduler


def replica_with_loop() -> TTS:
    """A TTS replica object around an idle engine loop; the loop's thread starts only on submit."""
    decoder = SimpleNamespace(
        vocab_limit=6561, t3=SimpleNamespace(hp=SimpleNamespace(stop_speech_token=6562))
    )
    replica = TTS.__new__(TTS)
    replica._engine = SimpleNamespace(info=SimpleNamespace(name="chatterbox"))
    replica._scheduler = T3Scheduler(decoder, BatchLimits())
    return replica


def test_user_config_batching_changes_the_running_loops_limits() -> None:
    replica = replica_with_loop()
    replica.reconfigure({"batching": {"max_batch_size": 3, "max_batch_tokens": 5000}})
    assert replica.batching()["max_batch_size"] == 3
    assert replica.batching()["max_batch_tokens"] == 5000
    replica.reconfigure({"batching": {"max_batch_size": 12}})  # the other limit back to its default
    assert replica._scheduler.limits == BatchLimits(max_batch_size=12)


def test_invalid_or_unknown_batching_settings_are_refused() -> None:
    replica = replica_with_loop()
    for bad in ({"max_batch_size": 0}, {"max_batch_tokens": -1}, {"max_batch": 4}):
        with pytest.raises(pydantic.ValidationError):
            replica.reconfigure({"batching": bad})
    assert replica._scheduler.limits == BatchLimits()


def test_an_engine_without_a_loop_reports_no_batching() -> None:
    replica = TTS.__new__(TTS)
    replica._engine = SimpleNamespace(info=SimpleNamespace(name="piper"))
    replica._scheduler = None
    replica.reconfigure({"batching": {"max_batch_size": 3}})
    assert replica.batching() is None
