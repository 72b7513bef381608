"""Request models: every field is honoured or refused with its name, before any work starts."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pipeline.schemas import OpenAISpeechRequest, TTSRequest, VCRequest


def refused_field(model, body: dict | str) -> str:
    with pytest.raises(ValidationError) as refused:
        if isinstance(body, str):
            model.model_validate_json(body)
        else:
            model.model_validate(body)
    return ".".join(str(part) for part in refused.value.errors()[0]["loc"])


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize(
    ("model", "template", "field"),
    [
        (TTSRequest, '{"text": "Hi.", "temperature": %s}', "temperature"),
        (TTSRequest, '{"text": "Hi.", "speed_factor": %s}', "speed_factor"),
        (TTSRequest, '{"text": "Hi.", "validation_threshold": %s}', "validation_threshold"),
        (OpenAISpeechRequest, '{"input": "Hi.", "speed": %s}', "speed"),
        (VCRequest, '{"input_audio_source": "a.wav", "chunk_sec": %s}', "chunk_sec"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(model, template, field, number):
    # Python's JSON parser (and so FastAPI's) reads NaN and Infinity; the models must not.
    assert refused_field(model, json.loads(template % number)) == field


def test_loudness_range_is_refused_rather_than_ignored():
    assert refused_field(TTSRequest, {"text": "Hi.", "normalize_lra": 7.0}) == "normalize_lra"
    assert TTSRequest(text="Hi.", normalize_audio=True).normalize_lra is None


@pytest.mark.parametrize("instructions", ["Speak cheerfully.", " calm "])
def test_voice_instructions_are_refused_and_empty_ones_accepted(instructions):
    assert (
        refused_field(OpenAISpeechRequest, {"input": "Hi.", "instructions": instructions}) == "instructions"
    )
    assert OpenAISpeechRequest(input="Hi.", instructions="").instructions == ""


def test_only_known_model_names_are_accepted():
    assert refused_field(OpenAISpeechRequest, {"input": "Hi.", "model": "whisper-1"}) == "model"
    for name in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "chatterbox"):
        assert OpenAISpeechRequest(input="Hi.", model=name).model == name


@pytest.mark.parametrize("field", ["project", "folder"])
@pytest.mark.parametrize("folder", ["../escape", "a/../../b", "bad\x00name", "-dash-first", "x" * 65])
def test_an_invalid_output_folder_is_refused_by_the_schema_before_generation(field, folder):
    assert refused_field(TTSRequest, {"text": "Hi.", field: folder}) == field


def test_nested_output_folders_are_accepted():
    assert TTSRequest(text="Hi.", project="book/chapter 1").output_folder == "book/chapter 1"
