"""What users type -> what the voice is asked to say, and which scripts are refused."""

from __future__ import annotations

import pytest

from pipeline import speakable
from pipeline.engines.base import SynthesisParams
from pipeline.errors import InvalidRequest, UnsupportedLanguage
from pipeline.speakable import check_script, clean_characters, digit_words, number_words, verbalize
from pipeline.text import TextOptions, chunk_text, preprocess
from pipeline.validation import DEFAULT_PASS_THRESHOLD, score_transcript

PIPER = "piper, en_US-joe-medium"


def spoken(text: str) -> str:
    return verbalize(clean_characters(text))


@pytest.mark.parametrize(
    ("written", "said"),
    [
        # emoji and pictographs
        ("Great job 👍!", "Great job!"),
        ("Family 👨\u200d👩\u200d👧 time", "Family time"),
        ("Go 🇺🇸 team", "Go team"),
        ("Press 5️⃣ now", "Press five now"),
        ("★ Top pick → buy • now ™", "Top pick buy now"),
        # control, format and odd space characters
        ("Hello\x00 world", "Hello world"),
        ("Bell\x07 and \x1b[31mred\x1b[0m text", "Bell and red text"),
        ("zero\u200bwidth\u200d and\ufeff soft\u00adhyphen", "zerowidth and softhyphen"),
        ("10\u00a0km away", "ten kilometers away"),
        ("One\u2028Two\r\nThree\x0bFour", "One\nTwo\nThree\nFour"),
        ("Ｈｅｌｌｏ １２３", "Hello one hundred and twenty-three"),
        ("Fish &amp; chips", "Fish and chips"),
        # URLs and e-mail addresses
        ("See https://www.example.com/docs.", "See example dot com slash docs."),
        ("Open https://shop.example.org/item/12345678?ref=abc#top now", "Open shop dot example dot org now"),
        ("Visit github.com today", "Visit github dot com today"),
        ("Write to jane.doe@example.com.", "Write to jane dot doe at example dot com."),
        # units, temperatures, dates and times
        ("It is 5 km, 3kg and 1 kg.", "It is five kilometers, three kilograms and one kilogram."),
        ("Files of 100 MB take 2.5h.", "Files of one hundred megabytes take two point five hours."),
        ("It was 20°C, then -5 °F.", "It was twenty degrees Celsius, then minus five degrees Fahrenheit."),
        ("Due 2024-03-15.", "Due March fifteenth, twenty twenty-four."),
        ("At 10:30, 10:05, 14:00 and 9pm.", "At ten thirty, ten oh five, fourteen hundred and nine p m."),
        # money
        (
            "It costs $5.50, €10, £3, ¥100 or USD 20.",
            "It costs five dollars and fifty cents, ten euros, three pounds, one hundred yen "
            "or twenty dollars.",
        ),
        ("Only $0.99, $1 or 10 €.", "Only ninety-nine cents, one dollar or ten euros."),
        ("A $2.5 million deal.", "A two point five million dollars deal."),
        # ordinals, percentages, separators, decimals, negatives, years, decades, ranges, versions
        ("The 1st, 22nd and 103rd.", "The first, twenty-second and one hundred and third."),
        ("Up 12.5% to 1,234.", "Up twelve point five percent to one thousand two hundred and thirty-four."),
        ("Pi is 3.14 and it fell -7 points.", "Pi is three point one four and it fell minus seven points."),
        ("In 1999 there were 1500 people.", "In nineteen ninety-nine there were fifteen hundred people."),
        ("In the 1990s and the '80s.", "In the nineteen nineties and the eighties."),
        ("Pages 10–20.", "Pages ten to twenty."),
        (
            "Python 3.12.1 at 192.168.0.1.",
            "Python three point twelve point one at "
            "one hundred and ninety-two dot one hundred and sixty-eight dot zero dot one.",
        ),
        ("An iPhone15 plays MP3 in 3D.", "An iPhone fifteen plays M P three in three D."),
        # long digit runs, phone numbers, IDs: digit by digit
        (
            "Card 12345678901234567890123.",
            "Card one two three four five six seven eight nine zero one two three four five six seven "
            "eight nine zero one two three.",
        ),
        (
            "Call 555-123-4567 or +44 20 7946 0958.",
            "Call five five five, one two three, four five six seven or "
            "plus four four, two zero, seven nine four six, zero nine five eight.",
        ),
        ("Agent 007.", "Agent zero zero seven."),
        # all-caps abbreviations
        ("The FBI uses GPUs and HTML.", "The F B I uses G P U's and H T M L."),
        ("NASA and I went to a BBQ.", "NASA and I went to a B B Q."),
        ("WE ARE OPEN TODAY", "WE ARE OPEN TODAY"),
        ("World War II.", "World War II."),
        # symbols
        ("Tom & Jerry, C++ and R&D.", "Tom and Jerry, C plus plus and R and D."),
        ("Item #5 for @john #winning", "Item number five for at john winning"),
        ("2+2=4", "two plus two equals four"),
        ("snake_case | pipes", "snake case pipes"),
        # mixed
        (
            "Meet me @ 10:30 at Café Zürich 😀 — it's 20°C & sunny!",
            "Meet me at ten thirty at Café Zürich — it's twenty degrees Celsius and sunny!",
        ),
    ],
)
def test_real_world_text_is_said_in_words(written: str, said: str) -> None:
    assert spoken(written) == said


def test_what_the_openai_path_sends_the_engine() -> None:
    """The OpenAI endpoint uses TextOptions() defaults: lower case after the caps are spelled."""
    text = "The FBI\x00 paid $5 for 3kg 😀 on 2024-03-15.\u200b"
    assert chunk_text(text, TextOptions()) == [
        "the f b i paid five dollars for three kilograms on march fifteenth, twenty twenty-four."
    ]


def test_dot_letters_and_spelled_capitals_read_the_same_way() -> None:
    assert preprocess("The U.S.A. and the FBI (USA).", TextOptions()) == "the u s a and the f b i (u s a)."


def test_a_long_run_of_spaces_around_a_symbol_collapses() -> None:
    # 10,000 spaces: a bare "[ \\t]*" before a symbol, retried at every space, took 3 s here.
    assert preprocess("a" + " \u00a0" * 5000 + "& b [1]", TextOptions()) == "a and b"


def test_no_control_or_invisible_character_reaches_the_engine() -> None:
    text = "".join(chr(code) for code in range(0x20)) + "text\ud800\ue000\u200b\u2066\U000e0041\x7f\x9f"
    assert preprocess(text, TextOptions()) == "text"


def test_sound_words_see_the_user_text_before_symbols_become_words() -> None:
    options = TextOptions(sound_words="&=>n, 😀=>haha")
    assert preprocess("Rock & roll 😀", options) == "rock n roll haha"


def test_citation_markers_are_removed_before_numbers_become_words() -> None:
    assert preprocess("Water is wet [12]. See note.3 Then 4 more.", TextOptions()) == (
        "water is wet. see note. then four more."
    )


def test_a_text_of_emoji_only_is_refused_as_empty_not_sent_to_the_engine() -> None:
    with pytest.raises(InvalidRequest, match="no text is left"):
        chunk_text("😀🎉 ✨", TextOptions())


def test_number_words_never_raise_and_fall_back_to_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    assert number_words(10**400) == digit_words("1" + "0" * 400)
    assert number_words(-(10**20)) == "minus " + digit_words("1" + "0" * 20)

    def failing(*_args: object, **_kwargs: object) -> str:
        raise NotImplementedError("no such conversion")

    monkeypatch.setattr(speakable, "num2words", failing)
    speakable._num2words_or_digits.cache_clear()
    try:
        assert number_words(4821) == "four eight two one"
        assert spoken("It is 4822 long.") == "It is four eight two two long."
    finally:
        speakable._num2words_or_digits.cache_clear()


# --- scripts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("Привет, мир", "Cyrillic"),
        ("Hello and Привет", "Cyrillic"),
        ("你好世界", "Han (Chinese)"),
        ("我", "Han (Chinese)"),
        ("こんにちは", "Hiragana"),
        ("안녕하세요", "Hangul"),
        ("مرحبا بالعالم", "Arabic"),
        ("مَرْحَبًا and hello to all my friends", "Arabic"),
        ("Γειά σου κόσμε", "Greek"),
        ("שלום", "Hebrew"),
        ("नमस्ते दुनिया", "Devanagari"),
        ("สวัสดี", "Thai"),
        ("Hello мир and γεια", "Greek and Cyrillic scripts"),
    ],
)
def test_text_in_a_script_the_engine_cannot_speak_is_refused(text: str, script: str) -> None:
    with pytest.raises(UnsupportedLanguage) as refused:
        check_script(text, "input", engine=PIPER)
    error = refused.value
    assert (error.status_code, error.code, error.param) == (422, "UNSUPPORTED_LANGUAGE", "input")
    assert error.message == (
        f"input is written in {script}{'' if 'scripts' in script else ' script'}; "
        f"the active engine ({PIPER}) speaks English only"
    )


@pytest.mark.parametrize(
    "text",
    [
        "Café, naïve, Zürich, Ångström, São Paulo, Łódź, smørrebrød, façade.",
        "The area is π r squared, 5 µm or 5 μm wide.",
        "I like the 中 character.",
        "Ｈｅｌｌｏ and 𝐛𝐨𝐥𝐝 letters.",
        "Numbers ٣ and symbols ™ 😀 are not letters.",
    ],
)
def test_latin_text_with_accents_or_a_stray_symbol_letter_is_accepted(text: str) -> None:
    check_script(text, "text", engine=PIPER)


def test_an_engine_that_speaks_more_languages_accepts_their_scripts() -> None:
    check_script("Привет, мир", "text", engine="chatterbox", languages=("en", "ru"))
    with pytest.raises(
        UnsupportedLanguage, match=r"Han \(Chinese\) script; .* speaks only English and Russian"
    ):
        check_script("你好", "text", engine="chatterbox", languages=("en", "ru"))


# --- the real engine ---------------------------------------------------------------------------


@pytest.mark.slow
def test_piper_speaks_text_with_control_characters_and_emoji(transcriber) -> None:
    """Piper's espeak bridge raised "embedded null character" on a NUL: a 500 for the request."""
    from pipeline.engines.piper import PiperEngine, PiperSettings

    engine = PiperEngine(PiperSettings())
    text = "Hello\x00 there\x07, how are\u200b you today? 😀\x1b[0m"
    chunks = chunk_text(text, TextOptions())
    assert chunks == ["hello there, how are you today?"]
    clip = engine.synthesize(chunks[0], None, SynthesisParams(seed=1))
    assert clip.duration_sec > 0.5
    assert score_transcript(chunks[0], transcriber.transcribe(clip)) >= DEFAULT_PASS_THRESHOLD
