"""Text preprocessing and chunking: what the engine is asked to say, and that nothing is lost."""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from pipeline.errors import InvalidRequest
from pipeline.text import TextOptions, chunk_text, parse_sound_words, preprocess, split_sentences

ALL_OFF = TextOptions(
    to_lowercase=False, normalize_spacing=False, fix_dot_letters=False, remove_reference_numbers=False
)
ONE_PER_SENTENCE = TextOptions(smart_batch_short_sentences=False)


def _only(**flags: bool) -> TextOptions:
    return TextOptions(
        **{
            "to_lowercase": False,
            "normalize_spacing": False,
            "fix_dot_letters": False,
            "remove_reference_numbers": False,
            **flags,
        }
    )


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _letters(index: int) -> str:
    """A distinct lower-case tag per index ("a", "b", ... "ba"): digits would be spoken as words."""
    tag = ""
    while True:
        index, letter = divmod(index, 26)
        tag = chr(ord("a") + letter) + tag
        if not index:
            return tag


# --- preprocessing flags -----------------------------------------------------------------------


def test_all_flags_off_leaves_text_untouched_but_numbers_are_always_spoken() -> None:
    text = "  Mr. U.S.A.  [12] end.3 Next\n\n"
    assert preprocess(text, ALL_OFF) == "  Mr. U.S.A.  [twelve] end.three Next\n\n"


def test_to_lowercase() -> None:
    assert preprocess("Hello World", _only(to_lowercase=True)) == "hello world"
    assert preprocess("Hello World", _only(to_lowercase=False)) == "Hello World"


def test_normalize_spacing_collapses_runs_and_keeps_a_single_newline() -> None:
    text = "  Hello   there.\n\nNew  paragraph.\nNext line.  "
    assert preprocess(text, _only(normalize_spacing=True)) == "Hello there. New paragraph.\nNext line."


def test_fix_dot_letters_spells_out_initialisms() -> None:
    options = _only(fix_dot_letters=True)
    assert (
        preprocess("The U.S.A. is big, said J.R.R. Tolkien", options)
        == "The U S A is big, said J R R Tolkien"
    )
    assert preprocess("i.e. the u.s.a today", options) == "i e the u s a today"
    assert preprocess("The U.S.A. is big", _only(fix_dot_letters=False)) == "The U.S.A. is big"


def test_fix_dot_letters_keeps_sentence_dots_of_one_letter_words_and_at_the_end() -> None:
    options = _only(fix_dot_letters=True)
    # The reference API rule turned "plan a." into "plan a", merging two sentences.
    assert preprocess("I chose plan a. Then plan b.", options) == "I chose plan a. Then plan b."
    assert preprocess("It was made in the U.S.A.", options) == "It was made in the U S A."
    assert (
        preprocess("Dr. Smith paid 3.14 dollars.", options) == "Dr. Smith paid three point one four dollars."
    )


def test_remove_reference_numbers_removes_citation_markers() -> None:
    options = _only(remove_reference_numbers=True)
    assert preprocess("Water is wet [12]. Fire is hot [1, 2].", options) == "Water is wet. Fire is hot."
    assert preprocess("As shown (3), it works.", options) == "As shown, it works."
    assert preprocess('The end.12 Next one!3 Said "hi"4 then', options) == 'The end. Next one! Said "hi" then'
    assert preprocess("The end.12", options) == "The end."


def test_remove_reference_numbers_keeps_ordinary_numbers() -> None:
    options = _only(remove_reference_numbers=True)
    text = "In 1999 I ate 3 apples. Version 3.12 is out. Born (2001). It is 5.5 km, or 12 miles. Room 42"
    assert preprocess(text, options) == (
        "In nineteen ninety-nine I ate three apples. Version three point one two is out. "
        "Born (two thousand and one). It is five point five kilometers, or twelve miles. Room forty-two"
    )
    assert preprocess("Water is wet [12].", _only(remove_reference_numbers=False)) == "Water is wet [twelve]."


# --- sound words -------------------------------------------------------------------------------


def _sound(text: str, field: str) -> str:
    return preprocess(text, _only(sound_words=field))


def test_sound_word_replacement_is_case_insensitive_and_whole_word_only() -> None:
    # The reference cut the word out of longer ones ("sighing" -> "ing").
    assert _sound("Sigh. I sigh while sighing.", "sigh=>hah") == "hah. I hah while sighing."


def test_sound_word_removal_tidies_commas_and_spaces() -> None:
    assert (
        _sound("Uh, I think, uh, that uh is fine. Uh. Huh? Uhh.", "uh") == "I think, that is fine. Huh? Uhh."
    )


def test_sound_word_possessives() -> None:
    assert _sound("The sigh's end. The sigh’s end.", "sigh=>hah") == "The hah's end. The hah’s end."
    assert _sound("Baggins' ring", "Baggins=>Frodo") == "Frodo's ring"
    assert _sound("Ask the sigh's owner.", "sigh") == "Ask the owner."


def test_sound_word_in_quotes_keeps_quotes_on_replace_and_drops_them_on_remove() -> None:
    assert _sound("He said 'sigh' and \"sigh\".", "sigh=>hah") == "He said 'hah' and \"hah\"."
    assert _sound('He said "uh" and left.', "uh") == "He said and left."
    # A closing quote after the word is not a possessive.
    assert _sound("'What a sigh' he said.", "sigh=>hah") == "'What a hah' he said."


def test_sound_word_leaves_contractions_alone() -> None:
    assert _sound("Don't t me. I can't.", "t=>tee") == "Don't tee me. I can't."


def test_sound_words_phrases_brackets_and_newline_separated_entries() -> None:
    field = "you know=>well\n[laughter]\nhmm"
    assert _sound("You  know, it works [laughter]. Hmm, right.", field) == "well, it works. right."


def test_sound_words_run_before_lowercase() -> None:
    assert preprocess("SIGH now", TextOptions(sound_words="sigh=>Hah")) == "hah now"


def test_parse_sound_words() -> None:
    parsed = parse_sound_words(" sigh => hah, uh\n\n[laughter],, um=> ")
    assert parsed == [("sigh", "hah"), ("uh", None), ("[laughter]", None), ("um", None)]
    assert parse_sound_words("") == []


@pytest.mark.parametrize("field", ["=>hah", "  => hah", "ok, =>x", "a=>b=>c"])
def test_parse_sound_words_rejects_malformed_entries(field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_sound_words(field)
    assert caught.value.param == "sound_words_field"


def test_malformed_sound_words_fail_the_chunking_request() -> None:
    with pytest.raises(InvalidRequest) as caught:
        chunk_text("hello there", TextOptions(sound_words="=>x"))
    assert caught.value.param == "sound_words_field"


# --- sentence splitting ------------------------------------------------------------------------


def test_split_sentences_knows_abbreviations() -> None:
    text = "Dr. Smith went to Washington. He arrived at 5 p.m. yesterday."
    assert split_sentences(text) == ["Dr. Smith went to Washington.", "He arrived at 5 p.m. yesterday."]
    assert len(split_sentences(text.lower())) == 2


def test_split_sentences_keeps_text_pysbd_drops() -> None:
    # pysbd 0.3.4 returns only "Why? " for this input.
    assert split_sentences("Why? ?!") == ["Why?", "?!"]
    assert "".join(split_sentences("Done etc. ?!")).replace(" ", "") == "Doneetc.?!"


def test_split_sentences_ends_a_sentence_at_a_newline() -> None:
    assert split_sentences("Chapter one\nIt was dark.\n\n") == ["Chapter one", "It was dark."]
    assert split_sentences("   \n ") == []


def test_split_sentences_is_safe_across_threads() -> None:
    texts = [f"Sentence {i}. Dr. No{i} arrived at {i} p.m. today! Why {i}?" * (i % 7 + 1) for i in range(200)]
    expected = [split_sentences(text) for text in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(split_sentences, texts)) == expected


# --- grouping ----------------------------------------------------------------------------------

SHORT = "One two three. Four five six. Seven eight. Nine ten eleven twelve."


def test_one_sentence_per_chunk_when_both_batching_modes_are_off() -> None:
    assert chunk_text(SHORT, ONE_PER_SENTENCE) == [
        "one two three.",
        "four five six.",
        "seven eight.",
        "nine ten eleven twelve.",
    ]


def test_enable_batching_packs_sentences_greedily_up_to_batch_chars() -> None:
    options = TextOptions(enable_batching=True, batch_chars=30)
    assert chunk_text(SHORT, options) == [
        "one two three. four five six.",
        "seven eight.",
        "nine ten eleven twelve.",
    ]
    assert chunk_text(SHORT, TextOptions(enable_batching=True)) == [_squash(SHORT.lower())]


def test_smart_batching_collects_short_sentences_until_the_threshold() -> None:
    long_sentence = "This sentence is long enough to stand alone as a chunk of its own."
    text = f"Hi there. How are you? {long_sentence} Fine, thank you so much. Bye now."
    chunks = chunk_text(text, TextOptions(smart_batch_threshold=20))
    assert chunks == [
        "hi there. how are you?",
        long_sentence.lower(),
        "fine, thank you so much.",
        "bye now.",
    ]
    # The default threshold (100) collects all of it into one chunk.
    assert chunk_text("Hi there. How are you? Fine.", TextOptions()) == ["hi there. how are you? fine."]


def test_grouping_never_exceeds_max_chunk_chars() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    for options in (
        TextOptions(enable_batching=True, batch_chars=1000, max_chunk_chars=120),
        TextOptions(smart_batch_threshold=1000, max_chunk_chars=120),
    ):
        chunks = chunk_text(text, options)
        assert max(map(len, chunks)) <= 120
        assert _squash(" ".join(chunks)) == preprocess(text, options)


# --- long sentences and tiny fragments ---------------------------------------------------------


def test_long_sentence_with_commas_is_split_at_commas() -> None:
    sentence = ", ".join(f"clause number {_letters(i)} goes on for a while" for i in range(45)) + "."
    assert len(sentence) > 1500
    chunks = chunk_text(sentence, ONE_PER_SENTENCE)
    assert len(chunks) >= 4
    assert all(len(chunk) <= 400 for chunk in chunks)
    assert all(chunk.endswith(",") for chunk in chunks[:-1])
    assert " ".join(chunks) == sentence


def test_long_sentence_without_punctuation_is_split_between_words() -> None:
    words = [f"word{_letters(i)}" for i in range(300)]
    chunks = chunk_text(" ".join(words), ONE_PER_SENTENCE)
    assert all(len(chunk) <= 400 for chunk in chunks)
    assert [word for chunk in chunks for word in chunk.split()] == words


def test_giant_word_is_split_hard() -> None:
    word = "".join(random.Random(3).choice("abcdefgh") for _ in range(1000))
    chunks = chunk_text(f"Start {word} end.", ONE_PER_SENTENCE)
    assert all(len(chunk) <= 400 for chunk in chunks)
    assert "".join(chunks).replace(" ", "") == f"start{word}end."


# pysbd reads a lowercase "ok." as an abbreviation, so these keep their case to get "Ok." alone.
CASED_ONE_PER_SENTENCE = TextOptions(to_lowercase=False, smart_batch_short_sentences=False)


def test_tiny_sentences_ride_with_a_neighbour_instead_of_being_dropped() -> None:
    # The reference API dropped sentences of 3 characters or less, like "Ok." and a stray quote.
    assert split_sentences("We start now. Ok. Then we go.") == ["We start now.", "Ok.", "Then we go."]
    assert chunk_text("We start now. Ok. Then we go.", CASED_ONE_PER_SENTENCE) == [
        "We start now. Ok.",
        "Then we go.",
    ]
    assert chunk_text("Ok. Let us begin.", CASED_ONE_PER_SENTENCE) == ["Ok. Let us begin."]
    assert chunk_text("Ok.", TextOptions()) == ["ok."]


def test_tiny_opening_quote_joins_the_sentence_after_it() -> None:
    # A line break after the quote makes it a sentence of its own.
    assert chunk_text("Hi there. “\nRun!” he said.", CASED_ONE_PER_SENTENCE) == [
        "Hi there.",
        "“ Run!” he said.",
    ]
    # A straight quote may close as well as open: it stays with the text before it.
    assert chunk_text('Hi there. "\nBye.', CASED_ONE_PER_SENTENCE) == ['Hi there. "', "Bye."]


def test_tiny_sentence_stays_alone_when_no_neighbour_has_room() -> None:
    options = replace(CASED_ONE_PER_SENTENCE, max_chunk_chars=20)
    assert chunk_text("Nineteen chars here. Ok. Nineteen chars here.", options) == [
        "Nineteen chars here.",
        "Ok.",
        "Nineteen chars here.",
    ]


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text_is_rejected(text: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chunk_text(text, TextOptions())
    assert caught.value.param == "text"


def test_text_emptied_by_sound_words_blames_the_sound_words() -> None:
    with pytest.raises(InvalidRequest) as caught:
        chunk_text("Uh, uh. Um!", TextOptions(sound_words="uh, um"))
    assert caught.value.param == "sound_words_field"


def test_punctuation_only_text_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as caught:
        chunk_text("?! ... “”", TextOptions())
    assert caught.value.param == "text"


def test_text_emptied_by_reference_removal_blames_the_text() -> None:
    with pytest.raises(InvalidRequest) as caught:
        chunk_text("[1] [2]", TextOptions(sound_words="uh"))
    assert caught.value.param == "text"


def test_options_reject_non_positive_limits() -> None:
    with pytest.raises(ValueError, match="max_chunk_chars"):
        TextOptions(max_chunk_chars=0)


# --- property: nothing is ever dropped ---------------------------------------------------------

_WORDS = "hello world the a I it's don't Dr. Mr. U.S.A. e.g. etc. p.m. 5 1999 3.14 $5 naïve ça end.12 sigh"
_MARKS = "\"quoted\" (3) [12] ( ) « » — – - , ; : ... ? ! ?! .. . “ ” ' Ok. No. Sigh's"
_VOCABULARY = [*_WORDS.split(), *_MARKS.split(), "\n", "  ", "\n\n", "verylongword" * 5]


def _random_text(rng: random.Random) -> str:
    return " ".join(rng.choice(_VOCABULARY) for _ in range(rng.randint(1, 400)))


def _random_options(rng: random.Random) -> TextOptions:
    return TextOptions(
        to_lowercase=rng.random() < 0.5,
        normalize_spacing=rng.random() < 0.5,
        fix_dot_letters=rng.random() < 0.5,
        remove_reference_numbers=rng.random() < 0.5,
        sound_words=rng.choice(["", "sigh=>hah", "sigh"]),
        enable_batching=rng.random() < 0.3,
        smart_batch_short_sentences=rng.random() < 0.5,
        max_chunk_chars=rng.choice([60, 150, 400]),
        batch_chars=rng.choice([50, 400]),
        smart_batch_threshold=rng.choice([20, 100]),
    )


@pytest.mark.parametrize("seed", range(20))
def test_chunks_reassemble_to_the_preprocessed_text(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(25):
        text, options = _random_text(rng), _random_options(rng)
        expected = preprocess(text, options)
        if not expected.strip():
            continue
        chunks = chunk_text(text, options)
        assert re.sub(r"\s", "", "".join(chunks)) == re.sub(r"\s", "", expected), (text, options)
        if max(map(len, expected.split())) <= options.max_chunk_chars:  # else a word is cut hard
            assert _squash(" ".join(chunks)) == _squash(expected), (text, options)
        assert all(0 < len(chunk) <= options.max_chunk_chars for chunk in chunks), (text, options)
        assert all(chunk == chunk.strip() for chunk in chunks)
