"""Transcript normalisation, scoring and candidate selection (pure: no model)."""

from __future__ import annotations

from difflib import SequenceMatcher

import numpy as np
import pytest

from pipeline.clip import AudioClip
from pipeline.validation import (
    DEFAULT_PASS_THRESHOLD,
    CandidateResult,
    normalize_words,
    pick_candidate,
    score_transcript,
)

PARAGRAPH_SENTENCES = [
    "The committee met on a cold morning to review the plans for the new library.",
    "Everyone agreed that the old building could no longer hold the growing collection of books.",
    "After a long discussion they chose a site near the river, close to the town square.",
    "The architect promised that the reading rooms would be bright, quiet and open to all.",
    "Work on the foundations is expected to begin in the spring and to last for several months.",
    "In the meantime the staff will move the rare maps and letters to a safe place in the archive.",
]


def cycled_words(sentences: list[str], word_count: int) -> list[str]:
    words = " ".join(sentences).split()
    return [words[index % len(words)] for index in range(word_count)]


def test_normalize_ignores_case_punctuation_and_apostrophes():
    assert normalize_words("Don't STOP—“now”, (he said)… it’s fine!") == [
        "dont",
        "stop",
        "now",
        "he",
        "said",
        "its",
        "fine",
    ]


def test_normalize_spells_out_numbers():
    assert normalize_words("1 cat, 21 dogs") == ["one", "cat", "twenty", "one", "dogs"]
    assert normalize_words("the 1st and 3rd") == ["the", "first", "and", "third"]
    assert normalize_words("50% of 3.5") == ["fifty", "percent", "of", "three", "point", "five"]
    assert normalize_words("1,000 people") == ["one", "thousand", "people"]
    assert normalize_words("$25.50") == ["twenty", "five", "dollars", "and", "fifty", "cents"]


def test_normalize_splits_hyphenated_number_words():
    assert normalize_words("Twenty-one") == ["twenty", "one"]


@pytest.mark.parametrize(
    ("sentences", "wrong_index"),
    [(PARAGRAPH_SENTENCES, 150), (PARAGRAPH_SENTENCES[:2], 0)],
    ids=["prose", "repeated-chorus"],
)
def test_long_correct_chunk_with_one_wrong_word_still_passes(sentences, wrong_index):
    expected = cycled_words(sentences, 300)
    heard = list(expected)
    heard[wrong_index] = "banana"
    assert score_transcript(" ".join(expected), " ".join(heard)) > 0.95


def test_default_difflib_autojunk_would_fail_the_repeated_chorus():
    """Why autojunk is off: words that fill over 1% of a 200+ word chunk can no longer anchor a match."""
    expected = cycled_words(PARAGRAPH_SENTENCES[:2], 300)
    heard = ["banana", *expected[1:]]
    assert SequenceMatcher(None, expected, heard).ratio() < 0.1


@pytest.mark.parametrize(
    ("expected", "transcript"),
    [
        ("I have 3 apples and 12 pears.", "I have three apples and twelve pears."),
        ("I have three apples and twelve pears.", "I have 3 apples and 12 pears."),
        ("It costs 25 dollars and 50 cents.", "It costs $25.50."),
        ("It costs $25.50.", "It costs twenty-five dollars and fifty cents."),
        ("Only $0.99 today.", "Only 99 cents today."),
    ],
)
def test_digits_and_number_words_score_the_same(expected, transcript):
    assert score_transcript(expected, transcript) == 1.0


@pytest.mark.parametrize(
    ("expected", "transcript"),
    [
        ("We met in 2024.", "We met in twenty twenty-four."),
        ("We met in 2024.", "We met in two thousand and twenty-four."),
        ("We met in 2024.", "We met in two thousand twenty four."),
        ("Back in nineteen ninety-nine.", "Back in 1999."),
        ("Back in one thousand nine hundred and ninety-nine.", "Back in 1999."),
        ("The battle of 1066.", "The battle of ten sixty-six."),
    ],
)
def test_years_score_one_in_any_correct_reading(expected, transcript):
    assert score_transcript(expected, transcript) == 1.0


def test_ordinals_and_percent_match_their_words():
    assert score_transcript("Came 1st with 95%.", "Came first with ninety-five percent.") == 1.0
    assert score_transcript("The twenty-first floor.", "The 21st floor.") == 1.0
    assert score_transcript("Up 50 percent.", "Up 50%.") == 1.0


def test_a_spoken_time_or_price_matches_whisper_decimal_spelling():
    assert score_transcript("Doctor Smith arrived at 10:30.", "Dr. Smith arrived at 10.30.") == 1.0
    assert score_transcript("It is three point five metres.", "It is 3.5 metres.") == 1.0


def test_abbreviated_titles_match_their_words():
    assert score_transcript("Mr and Mrs Jones met Dr. Who.", "Mister and Missus Jones met Doctor Who.") == 1.0


def test_spacing_only_differences_are_not_errors():
    assert score_transcript("Sea shells by the sea shore.", "Seashells by the seashore.") == 1.0
    assert score_transcript("sea shells", "sea shelves") < 1.0


def test_punctuation_and_case_do_not_count():
    assert score_transcript("Hello, World! How are you?", "hello world how are you") == 1.0


def test_a_wrong_number_still_costs_score():
    assert score_transcript("It costs 25 dollars.", "It costs 35 dollars.") < 1.0


def test_an_unrelated_transcript_scores_low():
    assert score_transcript(PARAGRAPH_SENTENCES[0], "Thank you for watching, please subscribe.") < 0.5


def test_one_wrong_word_in_a_ten_word_chunk_passes_the_default_threshold_two_do_not():
    expected = "the cat sat on the mat by the front door"
    assert score_transcript(expected, "the cat sat on the hat by the front door") >= DEFAULT_PASS_THRESHOLD
    assert score_transcript(expected, "the bat sat on the hat by the front door") < DEFAULT_PASS_THRESHOLD


@pytest.mark.parametrize(
    ("expected", "transcript"),
    [
        ("Card 12345678901234567890123.", "Card 12345678901234567890123."),
        ("It is 1e400 big.", "It is 1E400 big."),
        ("A googol is 1" + "0" * 100 + ".", "A googol is 1" + "0" * 100 + "."),
        ("Huge 1" + "0" * 400 + " and 9" + "9" * 5000, "Huge 1" + "0" * 400 + " and 9" + "9" * 5000),
        ("An ID of 9" + "9" * 5000, "An ID of 9" + "9" * 5000),
        ("Pi is 3." + "1" * 5000, "Pi is 3." + "1" * 5000),
        ("$" + "9" * 400 + ".5 and 1" + "0" * 400 + "th", "$" + "9" * 400 + ".5 and 1" + "0" * 400 + "th"),
    ],
)
def test_huge_numbers_and_long_digit_runs_score_without_raising(expected, transcript):
    """num2words overflows above 10**300 and int() refuses 4300+ digits: neither may fail a request."""
    assert score_transcript(expected, transcript) == 1.0
    assert score_transcript(expected, "something else") < 0.5


def test_a_long_digit_run_matches_its_digit_by_digit_reading():
    spoken = "card one two three four five six seven eight nine zero one two three four five six seven"
    assert score_transcript(spoken, "Card 1234567890123456 7.") == 1.0
    assert (
        score_transcript("call five five five, one two three, four five six seven", "Call 555-123-4567.")
        == 1.0
    )
    digits = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero"]
    assert normalize_words("12345678901234567890") == digits * 2


def test_what_the_voice_was_asked_to_say_matches_whisper_symbols():
    assert (
        score_transcript("write to jane dot doe at example dot com", "Write to jane.doe@example.com") == 1.0
    )
    assert score_transcript("r and d plus q a", "R&D + QA") == 1.0
    assert score_transcript("the f b i paid", "The FBI paid") == 1.0


def test_empty_sides():
    assert score_transcript("", "") == 1.0
    assert score_transcript("...", "") == 1.0
    assert score_transcript("Hello there.", "") == 0.0
    assert score_transcript("", "hello") == 0.0


def candidate(
    index: int,
    duration_sec: float | None = 1.0,
    transcript: str | None = None,
    score: float | None = None,
    error: str | None = None,
) -> CandidateResult:
    audio = None if duration_sec is None else AudioClip(np.zeros(int(duration_sec * 100)), 100)
    return CandidateResult(
        audio=audio,
        seed=1000 + index,
        round_index=0,
        candidate_index=index,
        transcript=transcript,
        score=score,
        error=error,
    )


def pick(candidates, *, validated=True, longest=True, threshold=0.85):
    return pick_candidate(
        candidates, threshold=threshold, validated=validated, use_longest_transcript_on_fail=longest
    )


def test_candidate_ok_needs_audio_and_no_error():
    assert candidate(0).ok
    assert not candidate(1, duration_sec=None, error="synthesis failed").ok
    assert not candidate(2, error="synthesis failed").ok
    assert candidate(3, duration_sec=2.5).duration_sec == 2.5
    assert candidate(4, duration_sec=None).duration_sec is None


def test_no_usable_candidate_gives_none():
    failed = [candidate(0, duration_sec=None, error="boom"), candidate(1, duration_sec=None, error="boom")]
    assert pick(failed) == (None, False)
    assert pick(failed, validated=False) == (None, False)
    assert pick([]) == (None, False)


def test_bypassed_validation_takes_the_shortest_usable_candidate():
    candidates = [candidate(0, 2.0), candidate(1, 0.5, error="synthesis failed"), candidate(2, 1.5)]
    chosen, passed = pick(candidates, validated=False)
    assert (chosen.candidate_index, passed) == (2, True)


def test_validation_takes_the_shortest_passing_candidate_not_the_shortest_overall():
    candidates = [
        candidate(0, 1.0, "hello", 0.5),
        candidate(1, 3.0, "hello there", 0.9),
        candidate(2, 2.0, "hello there", 0.85),
    ]
    chosen, passed = pick(candidates)
    assert (chosen.candidate_index, passed) == (2, True), "a score equal to the threshold passes"


def test_failed_validation_falls_back_to_the_longest_transcript():
    candidates = [
        candidate(0, 1.0, "hello there", 0.7),
        candidate(1, 2.0, "hello there my dear friend", 0.4),
        candidate(2, 1.0, None, 0.0),
        candidate(3, 9.9, "ERROR: a very long transcription failure message here", error="transcription"),
    ]
    chosen, passed = pick(candidates)
    assert (chosen.candidate_index, passed) == (1, False)


def test_failed_validation_falls_back_to_the_highest_score_when_longest_is_off():
    candidates = [
        candidate(0, 1.0, "hello there", 0.7),
        candidate(1, 2.0, "hello there my dear friend", 0.4),
        candidate(2, 1.5, "hello there", 0.7),
        candidate(3, 1.0, "hello there", 0.99, error="late failure"),
    ]
    chosen, passed = pick(candidates, longest=False)
    assert (chosen.candidate_index, passed) == (0, False), "ties on score go to the shorter audio"
