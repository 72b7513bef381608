"""engine: auto | chatterbox | piper, on the real engines (Piper bundled, Chatterbox random checkpoint)."""

from __future__ import annotations

import pytest

from pipeline.engines.selection import build_tts_engine
from pipeline.errors import EngineUnavailable
from pipeline.settings import AppSettings

pytestmark = pytest.mark.slow

# A repository that does not exist: offline the hub probe fails at once, online it answers 404,
# so this never downloads real weights whatever machine runs the tests.
MISSING_REPO = "chatterbox-serve-tests/no-such-model"


def settings(**fields) -> AppSettings:
    return AppSettings.model_validate(fields)


def test_piper_is_built_when_asked():
    assert build_tts_engine(settings(engine="piper")).info.name == "piper"


def test_piper_runs_on_cpu_and_says_that_a_gpu_ray_assigned_goes_unused(monkeypatch, caplog):
    from pipeline.devices import GpuAssignment
    from pipeline.engines import piper

    monkeypatch.setattr(piper, "ray_gpu_assignment", lambda: GpuAssignment(("0",), 0.5))
    engine = build_tts_engine(settings(engine="piper"))
    assert engine.info.device == "cpu"
    assert "GPU 0 that Ray assigned to this replica stays unused" in caplog.text


def test_auto_without_weights_or_downloads_falls_back_to_piper(caplog):
    engine = build_tts_engine(
        settings(engine="auto", chatterbox={"hf_repo": MISSING_REPO, "download": False})
    )
    assert engine.info.name == "piper"
    assert "serving the offline Piper voice instead" in caplog.text


def test_auto_with_an_unreachable_or_missing_hub_model_falls_back_to_piper(caplog):
    engine = build_tts_engine(settings(engine="auto", chatterbox={"hf_repo": MISSING_REPO, "download": True}))
    assert engine.info.name == "piper"
    assert MISSING_REPO in caplog.text or "hub" in caplog.text


def test_explicit_chatterbox_with_a_broken_checkpoint_fails_naming_the_cause(tmp_path):
    (tmp_path / "ve.safetensors").write_bytes(b"")
    with pytest.raises(EngineUnavailable, match=r"t3_cfg\.safetensors"):
        build_tts_engine(settings(engine="chatterbox", chatterbox={"checkpoint_dir": str(tmp_path)}))


def test_explicit_chatterbox_does_not_download_when_downloads_are_off():
    with pytest.raises(EngineUnavailable, match="download is off"):
        build_tts_engine(
            settings(engine="chatterbox", chatterbox={"hf_repo": MISSING_REPO, "download": False})
        )


def test_auto_with_a_local_checkpoint_serves_chatterbox(chatterbox_checkpoint):
    engine = build_tts_engine(
        settings(engine="auto", chatterbox={"checkpoint_dir": str(chatterbox_checkpoint)})
    )
    assert engine.info.name == "chatterbox"
    assert engine.info.supports_cloning
    assert engine.info.sample_rate == 24_000
