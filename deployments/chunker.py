"""Chunker deployment: text preprocessing and sentence chunking (CPU, cheap)."""

from __future__ import annotations

from pipeline.text import TextOptions, chunk_text


class Chunker:
    def split(self, text: str, options: TextOptions) -> list[str]:
        return chunk_text(text, options)
