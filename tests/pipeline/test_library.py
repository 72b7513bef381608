"""The audio library and its directory store, without Ray: names, atomic writes, processes sharing a root."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import soundfile

from pipeline.errors import Conflict, InvalidRequest, NotFound, UnsupportedMediaType
from pipeline.library import AudioLibrary, EntryFilter, LibraryKind
from pipeline.storage import STAGING_DIR, LocalDirectoryStore, clean_folder, clean_name

KIND = LibraryKind("voice", "voice_file", min_sec=1.0, max_sec=60.0, newest_first=False)


def tone(seconds: float = 1.5, rate: int = 16000, frequency: float = 220.0) -> bytes:
    samples = 0.3 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV")
    return buffer.getvalue()


@pytest.fixture
def library(tmp_path: Path) -> AudioLibrary:
    return AudioLibrary(LocalDirectoryStore(tmp_path / "voices"), KIND)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Anna", "Anna"), ("  my voice. ", "my voice"), ('a<b>c:d"e|f?g*h', "a_b_c_d_e_f_g_h"), ("Zoë", "Zoë")],
)
def test_clean_name_keeps_safe_names_and_replaces_reserved_characters(text, expected):
    assert clean_name(text, "name") == expected


@pytest.mark.parametrize("text", ["../x", "a/b", "a\\b", "..", ".", "   ", " . ", "x" * 101])
def test_clean_name_refuses_paths_and_empty_names(text):
    with pytest.raises(InvalidRequest) as error:
        clean_name(text, "name")
    assert error.value.param == "name"


@pytest.mark.parametrize(
    ("text", "expected"), [(None, ""), ("", ""), ("a/b", "a/b"), ("a//b/", "a/b"), ("a\\b", "a/b")]
)
def test_clean_folder_normalises_relative_folders(text, expected):
    assert clean_folder(text, "folder_path").as_posix() == (expected or ".")


@pytest.mark.parametrize(
    "text", ["/etc", "../up", "a/../../b", "a/./b", "C:\\Windows", "C:", "/".join("a" * 9)]
)
def test_clean_folder_refuses_anything_that_could_leave_the_root(text):
    with pytest.raises(InvalidRequest):
        clean_folder(text, "folder_path")


def test_store_refuses_keys_through_symlinks_out_of_the_root(tmp_path):
    store = LocalDirectoryStore(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "link").symlink_to(outside)
    with pytest.raises(InvalidRequest):
        store.write_bytes(PurePosixPath("link/evil.json"), b"{}")
    assert not list(outside.iterdir())


def test_a_library_whose_hidden_folders_were_cleaned_away_still_takes_uploads(library):
    shutil.rmtree(library.store.root / STAGING_DIR)
    shutil.rmtree(library.store.root / ".locks")
    entry = library.add(io.BytesIO(tone()), "take.wav", name="Anna")
    assert library.store.exists(PurePosixPath(entry.filename))


def test_add_writes_audio_and_sidecar_and_nothing_else(library):
    entry = library.add(io.BytesIO(tone()), "take.wav", name="Anna", folder="a/b", tags=["x"])
    root = library.store.root
    assert entry.filename == "a/b/Anna.wav"
    sidecar = json.loads((root / "a/b/Anna.wav.json").read_text())
    assert sidecar["name"] == "Anna" and sidecar["tags"] == ["x"] and sidecar["sample_rate"] == 16000
    assert sidecar["file_size_bytes"] == (root / "a/b/Anna.wav").stat().st_size
    assert not list((root / STAGING_DIR).iterdir())


def test_a_name_taken_under_another_extension_is_a_conflict(library):
    library.add(io.BytesIO(tone()), "bob.wav")
    flac = io.BytesIO()
    soundfile.write(flac, soundfile.read(io.BytesIO(tone()))[0], 16000, format="FLAC")
    with pytest.raises(Conflict):
        library.add(io.BytesIO(flac.getvalue()), "bob.flac")
    replaced = library.add(io.BytesIO(flac.getvalue()), "bob.flac", overwrite=True)
    assert [entry.filename for entry in library.entries()] == [replaced.filename] == ["bob.flac"]


def test_refused_uploads_leave_the_store_as_it_was(library):
    library.add(io.BytesIO(tone()), "kept.wav")
    before = sorted(path.relative_to(library.store.root) for path in library.store.root.rglob("*"))
    for data, filename, error in [
        (b"not audio", "x.wav", InvalidRequest),
        (tone(0.2), "short.wav", InvalidRequest),
        (tone(61), "long.wav", InvalidRequest),
        (tone(), "x.txt", UnsupportedMediaType),
        (tone(), "../x.wav", InvalidRequest),
    ]:
        with pytest.raises(error):
            library.add(io.BytesIO(data), filename)
    after = sorted(path.relative_to(library.store.root) for path in library.store.root.rglob("*"))
    assert [path for path in after if ".locks" not in path.parts] == [
        path for path in before if ".locks" not in path.parts
    ]


def test_a_file_dropped_in_by_hand_is_listed_with_metadata_from_the_file(library):
    (library.store.root / "manual.wav").write_bytes(tone(2.0))
    (entry,) = library.entries()
    assert entry.metadata.name == "manual"
    assert entry.metadata.duration_seconds == pytest.approx(2.0, abs=0.01)


def test_a_sidecar_describing_an_older_file_is_not_trusted_for_the_file_facts(library):
    """What a crash between the audio rename and the sidecar rename leaves behind."""
    library.add(io.BytesIO(tone(1.5)), "crash.wav", description="kept")
    (library.store.root / "crash.wav").write_bytes(tone(3.0))
    (entry,) = library.entries()
    assert entry.metadata.duration_seconds == pytest.approx(3.0, abs=0.01)
    assert entry.metadata.description == "kept"


def test_stale_staged_files_are_swept_and_fresh_ones_kept(tmp_path):
    store = LocalDirectoryStore(tmp_path / "root")
    stale, fresh = store.root / STAGING_DIR / "old.part", store.root / STAGING_DIR / "new.part"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    LocalDirectoryStore(tmp_path / "root")
    assert not stale.exists() and fresh.exists()


def test_find_by_bare_name_is_unique_or_a_conflict(library):
    library.add(io.BytesIO(tone()), "x.wav", name="solo", folder="one")
    assert library.find("solo", "voice").filename == "one/solo.wav"
    assert library.find("one/solo", "voice").filename == "one/solo.wav"
    library.add(io.BytesIO(tone()), "x.wav", name="twin", folder="one")
    library.add(io.BytesIO(tone()), "x.wav", name="twin", folder="two")
    with pytest.raises(Conflict):
        library.find("twin", "voice")
    with pytest.raises(NotFound):
        library.find("nobody", "voice")


def test_update_moves_the_voice_with_its_metadata(library):
    library.add(io.BytesIO(tone()), "x.wav", name="mover", folder="from", description="d")
    moved = library.update("mover", {"folder_path": "to/here", "tags": ["t"]})
    assert moved.filename == "to/here/mover.wav"
    assert library.find("to/here/mover", "voice").metadata.tags == ["t"]
    assert not (library.store.root / "from").exists()
    library.add(io.BytesIO(tone()), "x.wav", name="mover", folder="from")
    with pytest.raises(Conflict):
        library.update("from/mover", {"folder_path": "to/here"})


def test_bulk_delete_refuses_an_empty_filter(library):
    library.add(io.BytesIO(tone()), "a.wav", tags=["t"])
    library.add(io.BytesIO(tone()), "b.wav")
    with pytest.raises(InvalidRequest):
        library.delete_matching(EntryFilter())
    assert library.delete_matching(EntryFilter(tag="T")) == ["a.wav"]
    assert [entry.filename for entry in library.entries()] == ["b.wav"]


def _add_from_another_process(root: str, start_at: float, results) -> None:
    library = AudioLibrary(LocalDirectoryStore(root), KIND)
    time.sleep(max(0.0, start_at - time.time()))
    try:
        library.add(io.BytesIO(tone(2.0)), "same.wav")
        results.put("ok")
    except Conflict:
        results.put("conflict")


def test_processes_sharing_one_root_never_both_create_a_name(tmp_path):
    root = tmp_path / "shared"
    LocalDirectoryStore(root)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 3.0
    workers = [
        context.Process(target=_add_from_another_process, args=(str(root), start_at, results))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in workers)
    assert outcomes == ["conflict", "conflict", "conflict", "ok"]
