"""Where Chatterbox weights come from: a local dir, the Hugging Face cache, or a download.

Light on purpose (no torch, no chatterbox): ``engine: auto`` asks :func:`find_checkpoint` before it
decides whether paying for ``import chatterbox`` (~18 s) is worth it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import EngineUnavailable

# The files upstream's ChatterboxTTS.from_local reads; conds.pt (the built-in voice) is optional there.
WEIGHT_FILES = ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json")
BUILTIN_VOICE_FILE = "conds.pt"
CHECKPOINT_FILES = (*WEIGHT_FILES, BUILTIN_VOICE_FILE)

# Optional sidecar naming a non-default T3 backbone. Upstream picks the backbone by name from a
# module-level dict (LLAMA_CONFIGS) and only knows its full-size entries; real checkpoints have no
# sidecar and get upstream's default.
T3_BACKBONE_FILE = "t3_config.json"


@dataclass(frozen=True)
class T3Backbone:
    """A named transformers Llama config for T3 (``llama_config_name`` in upstream's T3Config)."""

    name: str
    llama_config: dict[str, object]

    def to_json(self) -> str:
        return json.dumps({"llama_config_name": self.name, "llama_config": self.llama_config}, indent=2)


def find_checkpoint(checkpoint_dir: str | None, hf_repo: str) -> Path | None:
    """The dir holding a complete checkpoint, found without any network access; None if there is none.

    A configured ``checkpoint_dir`` is the only place looked at: an explicit local checkpoint must
    never be silently replaced by hub weights.
    """
    if checkpoint_dir is not None:
        directory = Path(checkpoint_dir).expanduser()
        return directory if not _missing_files(directory) else None
    return _cached_snapshot(hf_repo)


def resolve_checkpoint(checkpoint_dir: str | None, hf_repo: str) -> Path:
    """The local dir to load from, downloading from the hub if needed (the HF cache is honoured)."""
    if checkpoint_dir is not None:
        directory = Path(checkpoint_dir).expanduser()
        if not directory.is_dir():
            raise EngineUnavailable(f"Chatterbox checkpoint dir {directory} does not exist")
        missing = _missing_files(directory)
        if missing:
            raise EngineUnavailable(
                f"Chatterbox checkpoint dir {directory} lacks {', '.join(missing)} "
                f"(needs {', '.join(WEIGHT_FILES)}; {BUILTIN_VOICE_FILE} optional)"
            )
        return directory
    cached = _cached_snapshot(hf_repo)
    if cached is not None:
        return cached
    return _download(hf_repo)


def read_t3_backbone(directory: Path) -> T3Backbone | None:
    sidecar = directory / T3_BACKBONE_FILE
    if not sidecar.exists():
        return None
    try:
        content = json.loads(sidecar.read_text())
        return T3Backbone(name=str(content["llama_config_name"]), llama_config=dict(content["llama_config"]))
    except (ValueError, KeyError, TypeError) as error:
        raise EngineUnavailable(f"{sidecar} is not a valid T3 backbone description: {error}") from error


def _missing_files(directory: Path) -> list[str]:
    return [name for name in WEIGHT_FILES if not (directory / name).is_file()]


def _cached_snapshot(hf_repo: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    parents = set()
    for name in CHECKPOINT_FILES:
        cached = try_to_load_from_cache(hf_repo, name)
        if not isinstance(cached, str):
            return None
        parents.add(Path(cached).parent)
    # All files of one snapshot share a dir; files from different revisions must not be mixed.
    return parents.pop() if len(parents) == 1 else None


def _download(hf_repo: str) -> Path:
    from huggingface_hub import hf_hub_download

    parents = set()
    for name in CHECKPOINT_FILES:
        try:
            parents.add(Path(hf_hub_download(repo_id=hf_repo, filename=name)).parent)
        except Exception as error:
            raise EngineUnavailable(
                f"could not download {name} of {hf_repo} from the Hugging Face hub: {error}"
            ) from error
    if len(parents) != 1:
        raise EngineUnavailable(
            f"the hub served files of {hf_repo} from different revisions: {sorted(parents)}"
        )
    return parents.pop()
