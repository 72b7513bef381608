"""The VC deployment class, called as a plain object (outside Serve)."""

from __future__ import annotations

import numpy as np
import pytest

from deployments import vc
from pipeline.clip import AudioClip
from pipeline.engines.base import ConversionParams, EngineInfo
from pipeline.errors import UnsupportedCapability

SPEECH = AudioClip(np.full(2_400, 0.1, dtype=np.float32), 24_000)


class EchoEngine:
    info = EngineInfo(name="echo", model="echo", device="cpu", sample_rate=24_000, supports_cloning=True)

    def convert(self, source, target, params):
        return AudioClip(source.samples, source.sample_rate, metadata={"seed": params.seed})


def test_piper_app_answers_conversions_with_the_missing_capability() -> None:
    deployment = vc.VC({"engine": "piper"})
    assert deployment.info().name == "none"
    with pytest.raises(UnsupportedCapability, match="voice conversion"):
        deployment.convert(SPEECH, None, ConversionParams(seed=1))


def test_converted_clip_names_its_replica_and_keeps_the_engines_metadata(monkeypatch) -> None:
    monkeypatch.setattr(vc, "build_vc_engine", lambda settings: EchoEngine())
    clip = vc.VC({"engine": "chatterbox"}).convert(SPEECH, None, ConversionParams(seed=5))
    # Outside Serve there is no replica to name.
    assert clip.metadata == {"seed": 5, "replica": None}
    np.testing.assert_array_equal(clip.samples, SPEECH.samples)
