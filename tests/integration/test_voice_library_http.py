"""The voice library and the VC input store over HTTP, on the real Serve app (offline Piper engine).

Uploads are real audio (Piper speech) or hostile files built here; every answer is checked for its
status and error shape, and the disk is checked for what was (not) written.
"""

from __future__ import annotations

import io
import json
import struct
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from tests.chatterbox_checkpoint import piper_sentence

pytestmark = pytest.mark.slow

MB = 1024 * 1024


def wav_bytes(samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def speech_wav() -> bytes:
    clip = piper_sentence("A short sentence to clone a voice from.")
    return wav_bytes(clip.samples, clip.sample_rate)


def upload(client: httpx.Client, data: bytes, filename: str = "voice.wav", **fields) -> httpx.Response:
    form = {
        key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in fields.items()
    }
    return client.post("/api/v1/voice", files={"voice_file": (filename, data, "audio/wav")}, data=form)


def voice_names(client: httpx.Client) -> list[str]:
    body = client.get("/api/v1/voices", params={"page_size": 100}).json()
    return [voice["filename"] for voice in body["voices"]]


def files_under(root: Path) -> set[str]:
    """Every file below ``root`` except the store's own lock and staging folders."""
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and ".locks" not in path.parts
    }


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert set(body["error"]) >= {"message", "type", "code", "param"}
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


def test_upload_list_search_update_and_delete_a_voice(client, speech_wav, data_dirs):
    response = upload(
        client,
        speech_wav,
        filename="narrator.wav",
        name="Anna",
        description="Warm narrator voice",
        tags="warm, narrator",
        folder_path="books/fiction",
        default_parameters=json.dumps({"temperature": 0.5, "exaggeration": 0.7}),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filename"] == "books/fiction/Anna.wav"
    metadata = body["voice_metadata"]
    assert metadata["tags"] == ["warm", "narrator"]
    assert metadata["default_parameters"] == {"temperature": 0.5, "exaggeration": 0.7}
    assert metadata["folder_path"] == "books/fiction"
    assert 1.5 < metadata["duration_seconds"] < 5
    assert (data_dirs["voices"] / "books/fiction/Anna.wav").read_bytes() == speech_wav

    listed = client.get("/api/v1/voices", params={"search": "NARRATOR"}).json()
    assert [voice["filename"] for voice in listed["voices"]] == ["books/fiction/Anna.wav"]
    assert listed["total"] == 1 and listed["total_pages"] == 1 and not listed["has_next"]
    assert client.get("/api/v1/voices", params={"folder": "books"}).json()["total"] == 1
    assert client.get("/api/v1/voices", params={"folder": "books/poetry"}).json()["total"] == 0

    folders = {item["path"]: item for item in client.get("/api/v1/voices/folders").json()["folders"]}
    assert folders["books"]["subfolders"] == ["books/fiction"]
    assert folders["books"]["voice_count"] == 0
    assert folders["books/fiction"]["voice_count"] == 1

    openai_voices = client.get("/v1/audio/voices").json()["voices"]
    assert {"id": "books/fiction/Anna.wav", "name": "Anna"}.items() <= next(
        voice for voice in openai_voices if voice["id"] == "books/fiction/Anna.wav"
    ).items()

    updated = client.put(
        "/api/v1/voice/books/fiction/Anna.wav/metadata",
        json={"description": "Calm", "tags": ["calm"], "folder_path": "books/poetry"},
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["filename"] == "books/poetry/Anna.wav"
    assert updated.json()["voice_metadata"]["default_parameters"] == {"temperature": 0.5, "exaggeration": 0.7}
    assert not (data_dirs["voices"] / "books/fiction").exists()
    listed = client.get("/api/v1/voices", params={"tag": "calm"}).json()["voices"]
    assert [(voice["filename"], voice["description"]) for voice in listed] == [
        ("books/poetry/Anna.wav", "Calm")
    ]

    assert_error(client.delete("/api/v1/voice/Anna.wav"), 400, "confirm")
    deleted = client.delete("/api/v1/voice/Anna.wav", params={"confirm": "true"})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted_files"] == ["books/poetry/Anna.wav"]
    assert "books/poetry/Anna.wav" not in voice_names(client)
    assert_error(client.delete("/api/v1/voice/Anna.wav", params={"confirm": "true"}), 404)


def test_existing_name_is_409_and_overwrite_replaces_it(client, speech_wav):
    assert upload(client, speech_wav, name="twice").status_code == 200
    error = assert_error(upload(client, speech_wav, name="twice"), 409, "name")
    assert "overwrite" in error["message"]
    quieter = wav_bytes(soundfile.read(io.BytesIO(speech_wav))[0] * 0.5, 22050)
    replaced = upload(client, quieter, filename="x.wav", name="twice", overwrite=True)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["voice_metadata"]["file_size_bytes"] == len(quieter)
    client.delete("/api/v1/voice/twice.wav", params={"confirm": "true"})


def test_two_concurrent_uploads_of_one_name_give_one_200_and_one_409(client, speech_wav):
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def send() -> None:
        barrier.wait()
        statuses.append(upload(client, speech_wav, name="racer").status_code)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 409]
    assert voice_names(client).count("racer.wav") == 1
    client.delete("/api/v1/voice/racer.wav", params={"confirm": "true"})


def _header_claiming_hours() -> bytes:
    """A WAV header that declares a 1 Hz sample rate: a few KB of data would last hours."""
    data = (np.sin(np.arange(4000) / 3) * 8000).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, 1, 1, 2, 2, 16) + b"data" + struct.pack("<I", len(data))
    return header + data


def _long_flac(seconds: float) -> bytes:
    """Compresses to a few KB, decodes to minutes: a decompression bomb for a voice library."""
    rate = 8000
    samples = np.tile(np.sin(np.arange(rate) * 2 * np.pi * 200 / rate) * 0.3, int(seconds))
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="FLAC")
    return buffer.getvalue()


def _hostile_cases(speech_wav: bytes) -> dict[str, tuple[dict, int, str | None]]:
    nan = np.full(24000, np.nan, dtype=np.float32)
    short = (np.sin(np.arange(2205) / 5) * 0.5).astype(np.float32)
    return {
        "text named .wav": ({"data": b"this is not audio at all " * 200}, 400, "voice_file"),
        "empty file": ({"data": b""}, 400, "voice_file"),
        "truncated header": ({"data": speech_wav[:30]}, 400, "voice_file"),
        "NaN samples": ({"data": wav_bytes(nan, 24000, "FLOAT")}, 400, "voice_file"),
        "0.1 s of audio": ({"data": wav_bytes(short, 22050)}, 400, "voice_file"),
        "silence": ({"data": wav_bytes(np.zeros(48000), 24000)}, 400, "voice_file"),
        "1 Hz header": ({"data": _header_claiming_hours()}, 400, "voice_file"),
        "11 minutes in a small FLAC": ({"data": _long_flac(660), "filename": "bomb.flac"}, 400, "voice_file"),
        "traversal name": ({"name": "../../outside"}, 400, "name"),
        "traversal folder": ({"folder_path": "../../outside"}, 400, "folder_path"),
        "dot folder": ({"folder_path": "a/./b"}, 400, "folder_path"),
        "absolute folder": ({"folder_path": "/etc/cron.d"}, 400, "folder_path"),
        "windows drive folder": ({"folder_path": "C:\\Windows"}, 400, "folder_path"),
        "traversal file name": ({"filename": "../../outside.wav"}, 400, "voice_file"),
        "absolute file name": ({"filename": "/tmp/outside.wav"}, 400, "voice_file"),
        "wrong extension": ({"filename": "voice.exe"}, 415, "voice_file"),
        "no extension": ({"filename": "voice"}, 415, "voice_file"),
        "unknown field": ({"colour": "red"}, 422, "colour"),
        "bad default_parameters JSON": ({"default_parameters": "{temperature"}, 422, "default_parameters"),
        "default out of range": (
            {"default_parameters": json.dumps({"temperature": 9})},
            422,
            "default_parameters.temperature",
        ),
        "unknown default": (
            {"default_parameters": json.dumps({"volume": 1})},
            422,
            "default_parameters.volume",
        ),
    }


def test_hostile_uploads_are_refused_and_write_nothing(client, speech_wav, data_dirs):
    service_root = data_dirs["voices"].parent
    before_files = files_under(service_root)
    before_listing = voice_names(client)
    for case, (override, status, param) in _hostile_cases(speech_wav).items():
        fields = {key: value for key, value in override.items() if key not in ("data", "filename")}
        response = upload(
            client,
            override.get("data", speech_wav),
            filename=override.get("filename", "voice.wav"),
            **{"name": "hostile", **fields},
        )
        assert response.status_code == status, f"{case}: {response.status_code} {response.text}"
        assert response.json()["error"]["param"] == param, f"{case}: {response.text}"
        assert files_under(service_root) == before_files, f"{case} wrote files"
    assert voice_names(client) == before_listing
    assert not list(service_root.parent.glob("outside*"))


def test_oversize_uploads_are_413_before_and_while_streaming(client, data_dirs):
    staging = data_dirs["voices"] / ".staging"
    declared = upload(client, b"\0" * (101 * MB), filename="big.wav")
    assert_error(declared, 413, "voice_file")

    sent = 0

    def chunked_body():
        # No Content-Length: only the running count can stop this one.
        nonlocal sent
        boundary_head = (
            b'--xyz\r\nContent-Disposition: form-data; name="voice_file"; filename="big.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n"
        )
        yield boundary_head
        block = b"\0" * MB
        for _ in range(150):
            sent += len(block)
            yield block
        yield b"\r\n--xyz--\r\n"

    try:
        streamed = client.post(
            "/api/v1/voice",
            content=chunked_body(),
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
    except httpx.HTTPError:
        pytest.fail("the server must answer 413, not drop the connection")
    assert_error(streamed, 413, "voice_file")
    assert not list(staging.iterdir())


def test_bulk_delete_needs_a_filter_and_deletes_only_what_matches(client, speech_wav):
    for name, tag in (("bulk_a", "bulk"), ("bulk_b", "bulk"), ("keep_c", "keep")):
        assert upload(client, speech_wav, name=name, tags=tag, folder_path="bulk").status_code == 200
    before = voice_names(client)
    assert_error(client.delete("/api/v1/voices", params={"confirm": "true"}), 400)
    assert_error(client.delete("/api/v1/voices", params={"tag": "bulk"}), 400, "confirm")
    assert voice_names(client) == before
    deleted = client.delete("/api/v1/voices", params={"confirm": "true", "tag": "bulk"}).json()
    assert sorted(deleted["deleted_files"]) == ["bulk/bulk_a.wav", "bulk/bulk_b.wav"]
    assert deleted["deleted_count"] == 2
    assert "bulk/keep_c.wav" in voice_names(client)
    gone = client.delete("/api/v1/voices", params={"confirm": "true", "folder": "nowhere"})
    assert_error(gone, 404, "folder")
    client.delete("/api/v1/voices", params={"confirm": "true", "folder": "bulk"})
    assert not [name for name in voice_names(client) if name.startswith("bulk/")]


def test_metadata_update_errors_name_the_field(client, speech_wav):
    assert upload(client, speech_wav, name="meta").status_code == 200
    assert_error(client.put("/api/v1/voice/missing.wav/metadata", json={"description": "x"}), 404)
    assert_error(
        client.put("/api/v1/voice/meta.wav/metadata", json={"default_parameters": {"top_p": 0}}),
        422,
        "default_parameters.top_p",
    )
    assert_error(
        client.put("/api/v1/voice/meta.wav/metadata", json={"folder_path": "../x"}), 400, "folder_path"
    )
    renamed = client.put("/api/v1/voice/meta/metadata", json={"name": "Meta voice"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["voice_metadata"]["name"] == "Meta voice"
    client.delete("/api/v1/voice/meta.wav", params={"confirm": "true"})


def test_unknown_and_url_voices_are_refused_in_both_dialects(client):
    missing = client.post("/api/v1/tts", json={"text": "Hello.", "reference_audio_filename": "nobody"})
    assert_error(missing, 404, "reference_audio_filename")
    url = client.post("/v1/audio/speech", json={"input": "Hello.", "voice": "http://169.254.169.254/x.wav"})
    error = assert_error(url, 400, "voice")
    assert "disabled" in error["message"]


def test_voice_conversion_without_a_vc_model_is_refused_plainly(client, speech_wav):
    health = client.get("/api/v1/health").json()
    assert health["engines"]["vc"]["available"] is False
    assert health["deployments"]["VC"]["status"] == "HEALTHY"
    multipart = client.post("/api/v1/vc", files={"input_audio": ("in.wav", speech_wav, "audio/wav")})
    assert assert_error(multipart, 422, "input_audio")["code"] == "CAPABILITY_UNSUPPORTED"
    stored = client.post("/api/v1/vc", json={"input_audio_source": "in.wav"})
    assert_error(stored, 422, "input_audio_source")
    assert_error(
        client.post("/api/v1/vc", content=b"{bad json", headers={"content-type": "application/json"}), 400
    )


def test_vc_inputs_upload_list_and_delete(client, speech_wav, data_dirs):
    def send(name: str, folder: str) -> httpx.Response:
        return client.post(
            "/api/v1/vc_input",
            files={"vc_input_file": (name, speech_wav, "audio/wav")},
            data={"text": f"take {name}", "project": folder},
        )

    assert send("first.wav", "session").status_code == 200
    second = send("second.wav", "session")
    assert second.status_code == 200, second.text
    assert second.json()["metadata"]["text"] == "take second.wav"
    assert_error(send("second.wav", "session"), 409)
    assert_error(send("../x.wav", "session"), 400, "vc_input_file")

    listed = client.get("/api/v1/vc_inputs", params={"folder": "session"}).json()
    assert listed["total_files"] == 2
    assert {item["filename"] for item in listed["files"]} == {"session/first.wav", "session/second.wav"}
    folders = client.get("/api/v1/vc_inputs/folders").json()
    assert {"path": "session", "voice_count": 2, "subfolders": []} in folders["folders"]

    assert_error(client.delete("/api/v1/vc_inputs", params={"confirm": "true"}), 400)
    one = client.delete("/api/v1/vc_input/session/first.wav", params={"confirm": "true"})
    assert one.json()["deleted_files"] == ["session/first.wav"]
    rest = client.delete("/api/v1/vc_inputs", params={"confirm": "true", "search": "second"})
    assert rest.json()["deleted_files"] == ["session/second.wav"]
    assert client.get("/api/v1/vc_inputs", params={"folder": "session"}).json()["total_files"] == 0
    assert not (data_dirs["vc_inputs"] / "session").exists()


def _m4a(samples: np.ndarray, sample_rate: int) -> bytes:
    """AAC in an MP4 container, as phones record: the reference rejected these outright."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        for packet in (*stream.encode(frame), *stream.encode(None)):
            container.mux(packet)
    return buffer.getvalue()


def test_ogg_and_m4a_voices_are_accepted_and_decoded(client):
    clip = piper_sentence("Phones record voices in these formats.")
    ogg = io.BytesIO()
    soundfile.write(ogg, clip.samples, clip.sample_rate, format="OGG", subtype="VORBIS")
    for filename, data in (
        ("phone.ogg", ogg.getvalue()),
        ("phone.m4a", _m4a(clip.samples, clip.sample_rate)),
    ):
        response = upload(client, data, filename=filename)
        assert response.status_code == 200, f"{filename}: {response.text}"
        metadata = response.json()["voice_metadata"]
        assert metadata["format"] == filename.rsplit(".", 1)[1]
        assert metadata["duration_seconds"] == pytest.approx(clip.duration_sec, abs=0.1)
        client.delete(f"/api/v1/voice/{response.json()['filename']}", params={"confirm": "true"})
