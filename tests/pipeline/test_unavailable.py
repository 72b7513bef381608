"""The stand-in VC engine, and build_vc_engine choosing it or Chatterbox (fast: no model is loaded)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.clip import AudioClip
from pipeline.engines.base import ConversionParams, VCEngine
from pipeline.engines.selection import build_vc_engine
from pipeline.engines.unavailable import NoVoiceConversion
from pipeline.errors import EngineUnavailable, UnsupportedCapability
from pipeline.settings import AppSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
# A repository that does not exist, so nothing is ever downloaded (see test_engine_selection.py).
MISSING_REPO = "chatterbox-serve-tests/no-such-model"
SPEECH = AudioClip(np.full(24_000, 0.1, dtype=np.float32), 24_000)


def settings(**fields) -> AppSettings:
    return AppSettings.model_validate(fields)


def test_piper_serves_no_voice_conversion_and_says_why() -> None:
    engine = build_vc_engine(settings(engine="piper"))
    assert isinstance(engine, NoVoiceConversion) and isinstance(engine, VCEngine)
    assert (engine.info.name, engine.info.supports_cloning) == ("none", False)
    assert "Piper" in engine.info.details["reason"]
    with pytest.raises(UnsupportedCapability, match=r"voice conversion is not available.*Piper") as error:
        engine.convert(SPEECH, None, ConversionParams(seed=1))
    assert error.value.status_code == 422


def test_auto_without_chatterbox_weights_turns_voice_conversion_off_loudly(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        engine = build_vc_engine(
            settings(engine="auto", chatterbox={"hf_repo": MISSING_REPO, "download": False})
        )
    assert isinstance(engine, NoVoiceConversion)
    assert "voice conversion is off" in caplog.text
    assert MISSING_REPO in engine.info.details["reason"]


def test_explicit_chatterbox_without_weights_fails_naming_the_cause(tmp_path) -> None:
    with pytest.raises(EngineUnavailable, match="download is off"):
        build_vc_engine(
            settings(engine="chatterbox", chatterbox={"hf_repo": MISSING_REPO, "download": False})
        )
    (tmp_path / "ve.safetensors").write_bytes(b"")
    with pytest.raises(EngineUnavailable, match=r"s3gen\.safetensors"):
        build_vc_engine(settings(engine="chatterbox", chatterbox={"checkpoint_dir": str(tmp_path)}))


def test_vc_modules_import_without_torch_or_ray() -> None:
    # The ingress and engine=auto import these before anything decides to pay for torch + chatterbox.
    modules = "pipeline.engines.chatterbox_vc, pipeline.engines.unavailable, pipeline.conversion"
    probe = f"import sys, {modules}; print(*(name in sys.modules for name in ('torch', 'chatterbox', 'ray')))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.split() == ["False", "False", "False"]
