"""Text preprocessing and chunking: what the TTS engine is asked to say, one chunk at a time.

Follows the reference server (factsheet §14) with its bugs fixed: sound words run on the API path,
whole words only; no text is ever dropped (the reference skips groups over 500 characters and
sentences of 3 characters or less); a long sentence is split at clause, then word boundaries.
What users type becomes what a voice can say (symbols, numbers, emoji) in ``pipeline.speakable``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from itertools import pairwise

import pysbd

from pipeline.errors import InvalidRequest
from pipeline.speakable import clean_characters, verbalize

# Chunks this short ("Ok.", a stray quote) make the TTS models babble; they ride with a neighbour.
TINY_CHUNK_CHARS = 3


@dataclass(frozen=True)
class TextOptions:
    """How one request's text is cleaned and cut; defaults are the reference server's."""

    to_lowercase: bool = True
    normalize_spacing: bool = True
    fix_dot_letters: bool = True
    remove_reference_numbers: bool = True
    sound_words: str = ""
    enable_batching: bool = False
    smart_batch_short_sentences: bool = True
    max_chunk_chars: int = 400
    batch_chars: int = 400
    smart_batch_threshold: int = 100
    # The request field the text came in ("text" natively, "input" in the OpenAI dialect).
    text_param: str = "text"

    def __post_init__(self) -> None:
        for name in ("max_chunk_chars", "batch_chars", "smart_batch_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")


def preprocess(text: str, options: TextOptions) -> str:
    """Apply the enabled cleaning steps in the reference UI's order (sound words first).

    Always, whatever the options: characters no voice can say go first (so that sound words
    match across a stray zero-width space), and after the user's sound words (which may map
    "&" or an emoji their own way) symbols and numbers become words (``pipeline.speakable``).
    Reference numbers are removed before that, while "[12]" is still digits; lowercasing comes
    after, since spelling out "FBI" needs its capitals.
    """
    text = clean_characters(text)
    sound_words = parse_sound_words(options.sound_words)
    if sound_words:
        text = _apply_sound_words(text, sound_words)
    if options.remove_reference_numbers:
        text = _CITATION_MARKER.sub("", text)
        text = _GLUED_REFERENCE.sub(r"\1", text)
    text = verbalize(text)
    if options.to_lowercase:
        text = text.lower()
    if options.normalize_spacing:
        # The reference's rule: runs of 2+ whitespace become one space, a single newline stays.
        text = re.sub(r"\s{2,}", " ", text.strip())
    if options.fix_dot_letters:
        text = _DOT_LETTERS.sub(_spell_dot_letters, text)
    return text


def parse_sound_words(field: str) -> list[tuple[str, str | None]]:
    """Parse ``word=>replacement`` / bare ``word`` entries, separated by commas or newlines.

    A ``None`` replacement (a bare word, or ``word=>`` with nothing after it) removes the word.
    """
    entries: list[tuple[str, str | None]] = []
    for raw_entry in re.split(r"[,\r\n]", field):
        entry = raw_entry.strip()
        if not entry:
            continue
        word, _, replacement = entry.partition("=>")
        word, replacement = word.strip(), replacement.strip()
        if not word:
            raise InvalidRequest(
                f"sound word entry {entry!r} has no word before '=>'", param="sound_words_field"
            )
        if "=>" in replacement:
            raise InvalidRequest(
                f"sound word entry {entry!r} has more than one '=>'", param="sound_words_field"
            )
        entries.append((word, replacement or None))
    return entries


def split_sentences(text: str) -> list[str]:
    """Split into sentences with pysbd (rule-based: knows "Dr.", "p.m.", needs no data download).

    Every character of ``text`` ends up in some sentence: pysbd silently drops pieces it cannot
    map back onto its input (trailing "?!" after some abbreviations, for one), so its sentences
    are used only as cut points. Lines are segmented one by one: a newline ends a sentence for
    pysbd anyway, and its cost grows with the square of the sentence count per call (measured:
    2500 "Ok." sentences on one line take about 2 s).
    """
    sentences: list[str] = []
    for line in text.splitlines():
        if line.strip():
            sentences.extend(_segment_line(line))
    return sentences


def chunk_text(text: str, options: TextOptions) -> list[str]:
    """Preprocess, split into sentences and group them into chunks of at most ``max_chunk_chars``.

    Grouping: ``enable_batching`` packs sentences greedily up to ``batch_chars``; otherwise
    ``smart_batch_short_sentences`` keeps sentences of ``smart_batch_threshold`` characters or
    more alone and collects shorter ones until their group reaches the threshold; otherwise one
    sentence per chunk. Sentences in a chunk are joined by single spaces.
    """
    if not text.strip():
        raise InvalidRequest(f"{options.text_param} is empty", param=options.text_param)
    sentences = split_sentences(preprocess(text, options))
    if not any(map(_has_words, sentences)):
        raise InvalidRequest("no text is left to speak after preprocessing", param=_emptied_by(text, options))
    limit = options.max_chunk_chars
    pieces = [piece for sentence in sentences for piece in _split_long(sentence, limit)]
    if options.enable_batching:
        chunks = _pack_greedy(pieces, min(options.batch_chars, limit))
    elif options.smart_batch_short_sentences:
        chunks = _pack_short(pieces, options.smart_batch_threshold, limit)
    else:
        chunks = pieces
    return _merge_tiny(chunks, limit)


# --- preprocessing helpers ---------------------------------------------------------------------

# The UI's rule (at least two letter-dot pairs) rather than the API's, which also ate the dot after
# any one-letter word ("plan a." -> "plan a"). The last dot may be missing ("u.s.a").
_DOT_LETTERS = re.compile(r"(?<![\w.])[^\W\d_](?:\.[^\W\d_])+(?P<final_dot>\.)?(?!\w)")

# Citation markers: [12], [1, 2], [3-5] and (3). Parenthesised numbers of 4+ digits are years.
# The spaces before one are matched from the first only: a bare "[ \t]*" is retried at every space
# of a run (10,000 spaces took 0.3 s).
_CITATION_MARKER = re.compile(r"(?<![ \t])[ \t]*(?:\[\d+(?:\s*[,–-]\s*\d+)*\]|\(\d{1,3}\))")

# Footnote digits glued to the end of a sentence ("end.12 Next", 'said."3'). The punctuation must
# follow a letter, so decimals ("version 3.12 is") are left alone.
_GLUED_REFERENCE = re.compile(r"(?<=[^\W\d_])([.!?]+[\"'”’)\]]*|[\"'”’)\]]+)\d+(?=\s|$)")

_OPENING_QUOTES = "\"“‘'"
_CLOSING_QUOTES = "\"”’'"
_APOSTROPHES = "'’"


def _spell_dot_letters(match: re.Match[str]) -> str:
    letters = " ".join(match.group(0).rstrip(".").split("."))
    # "we met in the u.s.a." keeps the dot that ends the text (or line) as a sentence end.
    text, end = match.string, match.end()
    ends_sentence = match.group("final_dot") and (end == len(text) or text[end] == "\n")
    return letters + "." if ends_sentence else letters


def _apply_sound_words(text: str, sound_words: list[tuple[str, str | None]]) -> str:
    for word, replacement in sound_words:
        text = _sound_word_pattern(word).sub(lambda m, r=replacement: _replace_sound_word(m, r), text)
    return _tidy_after_sound_words(text)


def _sound_word_pattern(word: str) -> re.Pattern[str]:
    """Match ``word`` as a whole word (the reference cut it out of longer words too).

    Also captures an opening quote before it and a possessive ``'s`` or closing quote after it,
    so that the replacement can keep or drop them. An apostrophe between letters joins words
    ("don't"), and word boundaries only apply on sides where the word starts/ends with a letter
    or digit, so entries such as "[laughter]" or "—" still match.
    """
    tokens = word.split()
    body = r"\s+".join(re.escape(token) for token in tokens)
    before = r"(?<!\w)(?<!\w['’])" if re.match(r"\w", tokens[0]) else ""
    after = r"(?!['’]?\w)" if re.search(r"\w$", tokens[-1]) else ""
    return re.compile(
        rf"(?:(?<!\w)(?P<open>[{_OPENING_QUOTES}]))?{before}(?P<word>{body})"
        rf"(?:(?P<possessive>[{_APOSTROPHES}]s)(?!\w)|{after}(?P<close>[{_CLOSING_QUOTES}])?)",
        re.IGNORECASE,
    )


def _replace_sound_word(match: re.Match[str], replacement: str | None) -> str:
    opening, possessive, closing = match.group("open") or "", match.group("possessive"), match.group("close")
    new_word = replacement or ""
    if possessive:  # "sigh's" -> "<replacement>'s"
        return opening + (new_word + possessive if new_word else "")
    if closing and opening and _quotes_pair(opening, closing):  # '"sigh"' keeps its quotes
        return opening + new_word + closing if new_word else ""
    if closing and closing in _APOSTROPHES and match.group("word")[-1] in "sS":
        # "Baggins'" is a plural possessive; after any other word the apostrophe closes a quote.
        return opening + (new_word + closing + "s" if new_word else "")
    return opening + new_word + (closing or "")


def _quotes_pair(opening: str, closing: str) -> bool:
    return (opening in '"“' and closing in '"”') or (opening in "'‘" and closing in "'’")


def _tidy_after_sound_words(text: str) -> str:
    """Remove the commas and spaces a removed word leaves behind (the reference's tidy-up)."""
    text = re.sub(r"([.!?])[ \t]+[.!?]+", r"\1", text)  # "fine. uh." -> "fine. ." -> "fine."
    text = re.sub(r"[ \t]+([,.!?;:])", r"\1", text)
    text = re.sub(r",(?:\s*,)+", ",", text)
    text = re.sub(r",+\s*([.!?])", r"\1", text)
    text = re.sub(r"([.!?])[ \t]*,+[ \t]*", r"\1 ", text)
    text = re.sub(r"^[ \t]*,+[ \t]*", "", text, flags=re.MULTILINE)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text.strip()


# --- chunking helpers --------------------------------------------------------------------------

# A clause ends at ; : , — – followed by a space ("1,000", "5:30" and "word—word" stay whole), so
# chunks are always cut at whitespace unless one word is longer than the limit.
_CLAUSE_END = re.compile(r"[;:,—–](?=\s)")
_SPACE = re.compile(r"\s")

# Unambiguous opening marks: a tiny chunk made of these belongs to the text after it.
_OPENERS = set("“‘([{«¿¡")


def _segment_line(line: str) -> list[str]:
    # A Segmenter keeps the text it works on as instance state, so sharing one between the threads
    # of a Serve replica would mix requests; building one costs about 4 µs.
    spans = pysbd.Segmenter(language="en", clean=False, char_span=True).segment(line)
    cuts = [0]
    for span in spans:
        # pysbd maps a sentence back by searching for it, which can land inside a word: cut only
        # next to whitespace, so no word is ever split.
        if cuts[-1] < span.end < len(line) and (line[span.end - 1].isspace() or line[span.end].isspace()):
            cuts.append(span.end)
    cuts.append(len(line))
    pieces = (line[start:end].strip() for start, end in pairwise(cuts))
    return [piece for piece in pieces if piece]


def _split_long(sentence: str, limit: int) -> list[str]:
    """Cut a sentence longer than ``limit`` at the last clause end that fits, else the last space.

    A clause cut is taken only if it keeps at least a quarter of the limit, so one early comma
    does not leave a 3-word chunk; a word longer than the limit is cut hard.
    """
    pieces: list[str] = []
    rest = sentence
    while len(rest) > limit:
        window = rest[: limit + 1]
        clause_ends = [m.end() for m in _CLAUSE_END.finditer(window) if limit // 4 <= m.end() <= limit]
        spaces = [m.start() for m in _SPACE.finditer(window, 1)]
        cut = clause_ends[-1] if clause_ends else (spaces[-1] if spaces else limit)
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def _pack_greedy(pieces: list[str], target: int) -> list[str]:
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 1 + len(piece) <= target:
            chunks[-1] = f"{chunks[-1]} {piece}"
        else:
            chunks.append(piece)
    return chunks


def _pack_short(pieces: list[str], threshold: int, limit: int) -> list[str]:
    """The reference API's smart batching, never growing a group past ``limit``."""
    chunks: list[str] = []
    pending = ""
    for piece in pieces:
        if len(piece) >= threshold:
            chunks.extend([pending, piece] if pending else [piece])
            pending = ""
            continue
        if pending and len(pending) + 1 + len(piece) > limit:
            chunks.append(pending)
            pending = ""
        pending = f"{pending} {piece}" if pending else piece
        if len(pending) >= threshold:
            chunks.append(pending)
            pending = ""
    if pending:
        chunks.append(pending)
    return chunks


def _merge_tiny(chunks: list[str], limit: int) -> list[str]:
    """Join each tiny chunk to the chunk before it, else to the one after; keep it if neither fits."""
    merged: list[str] = []
    for chunk in chunks:
        fits = bool(merged) and len(merged[-1]) + 1 + len(chunk) <= limit
        if fits and (_is_tiny(merged[-1]) or (_is_tiny(chunk) and not set(chunk) <= _OPENERS)):
            merged[-1] = f"{merged[-1]} {chunk}"
        else:
            merged.append(chunk)
    return merged


def _is_tiny(chunk: str) -> bool:
    return len(chunk) <= TINY_CHUNK_CHARS


def _has_words(text: str) -> bool:
    """Punctuation alone ("?!", a quote) is nothing a TTS engine can say."""
    return any(char.isalnum() for char in text)


def _emptied_by(text: str, options: TextOptions) -> str:
    """Name the field to blame when preprocessing leaves nothing: the sound words, if they did it."""
    if options.sound_words.strip() and _has_words(preprocess(text, replace(options, sound_words=""))):
        return "sound_words_field"
    return options.text_param
