"""Whisper validation: transcript normalisation, similarity score and candidate selection.

The reference UI (factsheet §14) compares characters with ``difflib`` and passes at 0.95. Two of
its defects are not copied here: difflib's autojunk heuristic (on by default) treats every item
that fills more than 1% of a 200+ item sequence as junk, so long, correct chunks scored near 0;
and digits were compared as written, so "25" against Whisper's "twenty five" (or the reverse)
failed a correct chunk. We compare words, with autojunk off, after spelling numbers out.

Whisper's own English normaliser (vendored in transformers) canonicalises the other way, number
words to digits; it is not used because importing transformers costs seconds in every process
that imports this module (the ingress among them) and it turns "ten thirty" into "1030".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from pipeline.clip import AudioClip
from pipeline.speakable import LONG_DIGIT_RUN, digit_words, number_words, ordinal_words, year_words

# Word-level ratio is 2 * matches / (len(expected) + len(transcript)): one wrong word in a 10-word
# chunk gives 0.90, two give 0.80; a 20-word chunk passes with up to three. Measured here, tiny.en
# (int8, CPU) on 16 correct Piper sentences: mean 0.99, lowest 0.875 and 0.895 (one misheard word
# in 7 and 19 words). 0.85 passes such slips of the offline default and fails a garbled or
# truncated chunk. The reference's 0.95 was on characters, where one wrong word costs a few percent.
DEFAULT_PASS_THRESHOLD = 0.85

# A word or number as it may be written or read aloud; the first reading is what normalize_words
# returns, the others are chosen only where the other side has them.
_Readings = tuple[tuple[str, ...], ...]

_DASHES = re.compile(r"[-‐‑‒–—―−]")
_APOSTROPHES = re.compile(r"['’‘ʼ`]")
# Whisper writes "jane.doe@example.com" and "R&D" for what pipeline.speakable had the voice say.
_SYMBOLS = re.compile(r"[&@+]|(?<=[^\W\d_])\.(?=[^\W\d_]{2})")
_SYMBOL_WORDS = {"&": " and ", "@": " at ", "+": " plus ", ".": " dot "}
_NUMBER = re.compile(
    r"(?P<currency>[$€£])?\s?"
    r"(?P<integer>\d{1,3}(?:,\d{3})+|\d+)"
    r"(?:\.(?P<fraction>\d+))?"
    r"(?:\s?(?P<percent>%)|(?P<ordinal>st|nd|rd|th)\b)?"
)
_WORD = re.compile(r"[^\W_]+")
# Whisper writes these titles abbreviated whichever way the text had them.
_ABBREVIATIONS = {
    "dr": (("doctor",),),
    "mr": (("mister",),),
    "mrs": (("missus",), ("misses",)),
    "st": (("saint",), ("street",)),
    "vs": (("versus",),),
}
_CURRENCY_UNITS = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
}


def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation, numbers spelled out in num2words' default cardinal.

    "Don't pay $25.50 (25%)!" -> dont pay twenty five dollars and fifty cents twenty five percent.
    """
    return [word for readings in _segments(text) for word in readings[0]]


def score_transcript(expected: str, transcript: str) -> float:
    """Word-level similarity in [0, 1] of a chunk's text and what Whisper heard.

    Numbers can be read several ways ("2024": "two thousand and twenty four" or "twenty twenty
    four"; "$25.50": "twenty five dollars and fifty cents" or "twenty five fifty"). Each number
    written in digits on one side takes the reading that occurs, word for word, on the other side,
    and its default cardinal otherwise; so a correct reading scores 1.0 whichever side used digits.
    Abbreviated titles ("Dr." / "doctor") work the same way. A difference in spacing only ("sea
    shells" heard as "seashells") counts as a match: it is how Whisper spells, not what it heard.
    """
    expected_segments, transcript_segments = _segments(expected), _segments(transcript)
    expected_words = _choose_readings(expected_segments, _default_words(transcript_segments))
    transcript_words = _choose_readings(transcript_segments, _default_words(expected_segments))
    if not expected_words and not transcript_words:
        return 1.0
    if not expected_words or not transcript_words:
        return 0.0
    matcher = SequenceMatcher(None, expected_words, transcript_words, autojunk=False)
    matched = 0.0
    for tag, exp_start, exp_end, heard_start, heard_end in matcher.get_opcodes():
        if tag == "equal":
            matched += exp_end - exp_start
        elif tag == "replace" and "".join(expected_words[exp_start:exp_end]) == "".join(
            transcript_words[heard_start:heard_end]
        ):
            matched += (exp_end - exp_start + heard_end - heard_start) / 2
    # SequenceMatcher.ratio() is 2 * matches / total; the spacing-only replacements count in full.
    return 2 * matched / (len(expected_words) + len(transcript_words))


@dataclass(frozen=True)
class CandidateResult:
    """One synthesis try of a chunk: its audio (None when synthesis failed) and how it scored."""

    audio: AudioClip | None
    seed: int
    round_index: int
    candidate_index: int
    transcript: str | None
    score: float | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.audio is not None and self.error is None

    @property
    def duration_sec(self) -> float | None:
        return self.audio.duration_sec if self.audio is not None else None


def pick_candidate(
    candidates: Sequence[CandidateResult],
    *,
    threshold: float,
    validated: bool,
    use_longest_transcript_on_fail: bool,
) -> tuple[CandidateResult | None, bool]:
    """The candidate to keep and whether it passed, by the reference UI's rules (factsheet §14).

    Shortest passing audio wins (a shorter take of the same words has fewer pauses and artefacts).
    If none passed: the longest transcript (most of the text spoken) or the highest score. Unlike
    the reference, a failed candidate never wins on the length of its error message.
    """
    usable = [candidate for candidate in candidates if candidate.ok]
    if not usable:
        return None, False
    if not validated:
        return min(usable, key=_duration), True
    passing = [c for c in usable if c.score is not None and c.score >= threshold]
    if passing:
        return min(passing, key=_duration), True
    if use_longest_transcript_on_fail:
        return max(usable, key=lambda c: (len(normalize_words(c.transcript or "")), _score(c))), False
    return max(usable, key=lambda c: (_score(c), -_duration(c))), False


def _duration(candidate: CandidateResult) -> float:
    return candidate.duration_sec or 0.0


def _score(candidate: CandidateResult) -> float:
    return candidate.score if candidate.score is not None else -1.0


def _segments(text: str) -> list[_Readings]:
    """The text as a sequence of words and numbers, each with its readings."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _APOSTROPHES.sub("", _DASHES.sub(" ", text))
    text = _SYMBOLS.sub(lambda match: _SYMBOL_WORDS[match.group(0)], text)
    segments: list[_Readings] = []
    position = 0
    for match in _NUMBER.finditer(text):
        segments.extend(_word_readings(word) for word in _WORD.findall(text[position : match.start()]))
        segments.append(_number_readings(match))
        position = match.end()
    segments.extend(_word_readings(word) for word in _WORD.findall(text[position:]))
    return segments


def _word_readings(word: str) -> _Readings:
    return ((word,), *_ABBREVIATIONS.get(word, ()))


def _number_readings(match: re.Match[str]) -> _Readings:
    """Never raises: a run of more than LONG_DIGIT_RUN digits (an ID, a card number, a Whisper
    transcript of one) is read digit by digit and never converted to an int, so neither
    num2words' overflow above 10**300 nor int()'s 4300-digit limit can fail a request."""
    digits = match["integer"].replace(",", "")
    fraction, currency = match["fraction"], match["currency"]
    if len(digits) > LONG_DIGIT_RUN:
        wholes = [_digit_words(digits)]
    elif match["ordinal"] and not fraction and not currency:
        return (_words(ordinal_words(int(digits))),)
    else:
        wholes = _integer_readings(digits, year_like=len(match["integer"]) == 4)
    if currency:
        readings = _money_readings(wholes, digits, fraction, _CURRENCY_UNITS[currency])
    elif fraction:
        readings = [(*whole, "point", *_digit_words(fraction)) for whole in wholes]
        if len(fraction) == 2:  # Whisper writes a spoken "ten thirty" (a time, a price) as 10.30
            readings += [(*whole, *_words(number_words(int(fraction)))) for whole in wholes]
    else:
        readings = wholes
    if match["percent"]:
        readings = [(*reading, "percent") for reading in readings]
    return tuple(dict.fromkeys(readings))


def _integer_readings(digits: str, *, year_like: bool) -> list[tuple[str, ...]]:
    """num2words' British cardinal ("one hundred and five"), the American one without "and", for
    four digits the year reading ("nineteen ninety nine", "twenty twenty four"), and from three
    digits on digit by digit (a phone number, an ID)."""
    cardinal = _words(number_words(int(digits)))
    readings = [cardinal, tuple(word for word in cardinal if word != "and")]
    if year_like:
        readings.append(_words(year_words(int(digits))))
    if len(digits) >= 3 or digits.startswith("0"):
        readings.append(_digit_words(digits))
    return list(dict.fromkeys(readings))


def _money_readings(
    wholes: list[tuple[str, ...]], digits: str, fraction: str | None, units: tuple[str, str, str, str]
) -> list[tuple[str, ...]]:
    """Spoken forms of an amount: twenty five dollars (and) fifty cents, or twenty five fifty."""
    unit_one, unit_many, sub_one, sub_many = units
    unit = unit_one if digits.lstrip("0") == "1" else unit_many
    if not fraction or not fraction.strip("0"):
        return [(*whole, unit) for whole in wholes]
    if len(fraction) != 2:
        return [(*whole, "point", *_digit_words(fraction), unit_many) for whole in wholes]
    cents = _words(number_words(int(fraction)))
    cents_spoken = (*cents, sub_one if int(fraction) == 1 else sub_many)
    readings = [cents_spoken] if not digits.strip("0") else []
    for whole in wholes:
        readings += [(*whole, unit, "and", *cents_spoken), (*whole, unit, *cents_spoken), (*whole, *cents)]
    return readings


def _digit_words(digits: str) -> tuple[str, ...]:
    return tuple(digit_words(digits).split())


def _words(text: str) -> tuple[str, ...]:
    """Words of num2words' output, which has hyphens and commas ("one thousand, twenty-one")."""
    return tuple(_WORD.findall(text))


def _default_words(segments: list[_Readings]) -> tuple[str, ...]:
    return tuple(word for readings in segments for word in readings[0])


def _choose_readings(segments: list[_Readings], other_words: tuple[str, ...]) -> list[str]:
    """Each number's reading that the other side spells out word for word, else its default."""
    words: list[str] = []
    for readings in segments:
        if len(readings) > 1:
            readings = tuple(reading for reading in readings if _occurs_in(reading, other_words)) or readings
        words.extend(readings[0])
    return words


def _occurs_in(phrase: tuple[str, ...], words: tuple[str, ...]) -> bool:
    length = len(phrase)
    return any(words[start : start + length] == phrase for start in range(len(words) - length + 1))
