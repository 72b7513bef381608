"""Turn what users type into what a TTS voice can say: characters, symbols, numbers, abbreviations.

Neither engine reads markup: Chatterbox's tokenizer says something odd, or nothing, for "€5",
"20°C" or a lower-cased "fbi", and Piper's espeak front end is a C library that fails on a NUL
character. ``pipeline.text.preprocess`` applies this module to every request of both dialects:

1. :func:`clean_characters`: control, format (zero-width, bidi marks), private-use, surrogate
   and unassigned code points removed (terminal escape sequences whole); line separators become
   "\\n", odd spaces " "; HTML entities decoded; full-width and "mathematical bold" letters and
   non-ASCII digits folded to ASCII. Libraries: ``unicodedata`` (categories, NFC, NFKC) and
   ``html.unescape``.
2. :func:`verbalize`: e-mail addresses, URLs, ISO dates, times, money, percentages,
   temperatures, units, ordinals, decades, phone numbers, long digit runs, plain numbers,
   symbols and all-caps abbreviations as words. Libraries: ``num2words`` says every number,
   ``emoji.replace_emoji`` finds emoji, ``urllib.parse`` splits URLs, ``calendar`` names months.
   The rules themselves are hand-written regular expressions: no installed library has them
   (nemo-text-processing does, but needs pynini/OpenFst grammars compiled at start, too heavy
   for the chunker replica), and a few regex passes per line cost well under a millisecond.

:func:`check_script` refuses text in a script the engine cannot speak (``UnsupportedLanguage``).

num2words is never handed more than :data:`LONG_DIGIT_RUN` digits (an ID or a card number is
read digit by digit; num2words overflows above 10**300 anyway), and whatever it raises falls back
to digits: a number in the text never fails a request.
"""

from __future__ import annotations

import calendar
import datetime
import html
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from urllib.parse import urlsplit

import emoji
from num2words import num2words

from pipeline.errors import UnsupportedLanguage

# Longer digit runs (card numbers, IDs) are read digit by digit: nobody says "one quadrillion ...".
LONG_DIGIT_RUN = 15

# What the engines speak today: the Piper en_US voice and English Chatterbox.
ENGLISH: tuple[str, ...] = ("en",)


def clean_characters(text: str) -> str:
    """The text without code points no voice can say, with plain spaces and "\\n" line breaks."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n"))
    if "&" in text:
        text = _HTML_ENTITY.sub(lambda match: html.unescape(match.group(0)), text)
    if "\x1b" in text:  # terminal colour codes pasted with the text: "\x1b[31m" is not "[31m"
        text = _ANSI_ESCAPE.sub("", text)
    return "".join(map(_clean_character, text))


def verbalize(text: str) -> str:
    """Symbols, numbers and abbreviations written as words; expects :func:`clean_characters` output.

    Works line by line (no rule spans a line break, so lines stay as they are) and leaves spacing
    and case alone except where a rule rewrites something.
    """
    return "\n".join(_verbalize_line(line) for line in text.split("\n"))


def check_script(text: str, param: str, *, engine: str, languages: Sequence[str] = ENGLISH) -> None:
    """Refuse text in a writing system that none of the engine's ``languages`` is written in.

    The rule: refused when a word (a run of letters and their marks) has two or more letters of
    one foreign script, or when the foreign letters outnumber the others. A lone foreign letter
    in text of the engine's script (π, µ, a Cyrillic homoglyph) passes: there it is a symbol.
    Accented Latin (café, naïve, Zürich) is Latin; letters of scripts not named here never count.
    """
    if text.isascii():
        return
    allowed = {script for language in languages for script in _language(language)[1]}
    foreign: Counter[str] = Counter()
    native_letters = 0
    has_foreign_word = False
    for word in _letter_runs(text):
        word_foreign = {script: count for script, count in word.items() if script not in allowed}
        native_letters += word.total() - sum(word_foreign.values())
        foreign.update(word_foreign)
        has_foreign_word = has_foreign_word or any(count >= 2 for count in word_foreign.values())
    if not (has_foreign_word or foreign.total() > native_letters):
        return
    scripts = [_SCRIPT_NAMES[script] for script, _ in foreign.most_common()]
    found = f"{_join(scripts)} script{'s' if len(scripts) > 1 else ''}"
    names = [_language(language)[0] for language in languages]
    speaks = f"{names[0]} only" if len(names) == 1 else f"only {_join(names)}"
    raise UnsupportedLanguage(
        f"{param} is written in {found}; the active engine ({engine}) speaks {speaks}", param=param
    )


def number_words(value: int) -> str:
    """A cardinal ("one thousand two hundred and thirty-four"); digit by digit if too long."""
    return _num2words_or_digits(value, "cardinal")


def ordinal_words(value: int) -> str:
    """An ordinal ("twenty-second"); digit by digit if too long."""
    return _num2words_or_digits(value, "ordinal")


def year_words(value: int) -> str:
    """A year as said ("nineteen ninety-nine", "two thousand and five", "twenty twenty-four")."""
    return _num2words_or_digits(value, "year")


def digit_words(digits: str) -> str:
    """Digits one by one ("zero zero seven"); characters that are not digits are skipped."""
    return " ".join(_DIGIT_NAMES[int(digit)] for digit in digits if digit.isdecimal())


# --- characters --------------------------------------------------------------------------------

_HTML_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z]{2,8});")
_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")
# What str.splitlines() breaks on (pysbd's splitting relies on it), besides "\n" itself.
_LINE_BREAKS = frozenset("\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn"})


@lru_cache(maxsize=8192)
def _clean_character(char: str) -> str:
    if char in "\n\t ":
        return char
    if char in _LINE_BREAKS:
        return "\n"
    category = unicodedata.category(char)
    if category == "Zs" or char == "\x1f":  # no-break, thin, ideographic spaces; \x1f is whitespace
        return " "
    if category in _REMOVED_CATEGORIES:
        return ""
    if category == "Nd":  # Arabic-Indic, Devanagari, full-width digits: each has a decimal value
        return str(unicodedata.decimal(char))
    if category[0] == "L" and not char.isascii():
        folded = unicodedata.normalize("NFKC", char)
        if folded.isascii() and folded.isalpha():  # "Ｈ", "𝐇", "ﬁ"; not "µ", whose NFKC is Greek
            return folded
    return char


# --- scripts -----------------------------------------------------------------------------------

# First word of a letter's Unicode name -> the script's name in messages. Letters of other names
# (MODIFIER LETTER, MICRO SIGN, SCRIPT SMALL L ...) are symbols here and never refused.
_SCRIPT_NAMES = {
    "LATIN": "Latin",
    "CYRILLIC": "Cyrillic",
    "GREEK": "Greek",
    "ARMENIAN": "Armenian",
    "GEORGIAN": "Georgian",
    "HEBREW": "Hebrew",
    "ARABIC": "Arabic",
    "SYRIAC": "Syriac",
    "THAANA": "Thaana",
    "DEVANAGARI": "Devanagari",
    "BENGALI": "Bengali",
    "GURMUKHI": "Gurmukhi",
    "GUJARATI": "Gujarati",
    "ORIYA": "Odia",
    "TAMIL": "Tamil",
    "TELUGU": "Telugu",
    "KANNADA": "Kannada",
    "MALAYALAM": "Malayalam",
    "SINHALA": "Sinhala",
    "THAI": "Thai",
    "LAO": "Lao",
    "TIBETAN": "Tibetan",
    "MYANMAR": "Myanmar",
    "KHMER": "Khmer",
    "MONGOLIAN": "Mongolian",
    "ETHIOPIC": "Ethiopic",
    "CHEROKEE": "Cherokee",
    "CJK": "Han (Chinese)",
    "HIRAGANA": "Hiragana",
    "KATAKANA": "Katakana",
    "BOPOMOFO": "Bopomofo",
    "HANGUL": "Hangul",
    "YI": "Yi",
}

# Language code -> (name, scripts): the languages of Chatterbox's multilingual model, for when an
# engine speaks more than English. Latin goes with every language: names and brands in Latin
# letters are normal in any text.
_LATIN = ("LATIN",)
_LANGUAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ar": ("Arabic", ("ARABIC", *_LATIN)),
    "da": ("Danish", _LATIN),
    "de": ("German", _LATIN),
    "el": ("Greek", ("GREEK", *_LATIN)),
    "en": ("English", _LATIN),
    "es": ("Spanish", _LATIN),
    "fi": ("Finnish", _LATIN),
    "fr": ("French", _LATIN),
    "he": ("Hebrew", ("HEBREW", *_LATIN)),
    "hi": ("Hindi", ("DEVANAGARI", *_LATIN)),
    "it": ("Italian", _LATIN),
    "ja": ("Japanese", ("CJK", "HIRAGANA", "KATAKANA", *_LATIN)),
    "ko": ("Korean", ("HANGUL", "CJK", *_LATIN)),
    "ms": ("Malay", _LATIN),
    "nl": ("Dutch", _LATIN),
    "no": ("Norwegian", _LATIN),
    "pl": ("Polish", _LATIN),
    "pt": ("Portuguese", _LATIN),
    "ru": ("Russian", ("CYRILLIC", *_LATIN)),
    "sv": ("Swedish", _LATIN),
    "sw": ("Swahili", _LATIN),
    "tr": ("Turkish", _LATIN),
    "zh": ("Chinese", ("CJK", "BOPOMOFO", *_LATIN)),
}


def _language(code: str) -> tuple[str, tuple[str, ...]]:
    return _LANGUAGES.get(code, (code, _LATIN))


def _letter_runs(text: str) -> Iterator[Counter[str]]:
    """Per word (a run of letters and marks; CJK has no spaces, so a run can be a sentence), how
    many of its letters are in each named script."""
    word: Counter[str] = Counter()
    in_word = False
    for char in text:
        kind = _word_character(char)
        if kind is None:
            if in_word:
                yield word
                word, in_word = Counter(), False
            continue
        in_word = True
        if kind:
            word[kind] += 1
    if in_word:
        yield word


@lru_cache(maxsize=8192)
def _word_character(char: str) -> str | None:
    """None outside words; a letter's script (first word of its name) if named, else ""."""
    category = unicodedata.category(char)
    if category[0] not in "LM":
        return None
    if category[0] == "M":
        return ""
    name = unicodedata.name(char, "").removeprefix("HALFWIDTH ").removeprefix("FULLWIDTH ")
    script = name.split(" ", 1)[0].split("-", 1)[0]  # "KATAKANA-HIRAGANA PROLONGED SOUND MARK"
    return script if script in _SCRIPT_NAMES else ""


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


# --- numbers -----------------------------------------------------------------------------------

_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@lru_cache(maxsize=4096)
def _num2words_or_digits(value: int, kind: str) -> str:
    minus = "minus " if value < 0 else ""
    if abs(value) >= 10**LONG_DIGIT_RUN:
        return minus + digit_words(str(abs(value)))
    try:
        words = num2words(value, to=kind)
    except Exception:  # OverflowError, ValueError, NotImplementedError, ...: the digits always work
        return minus + digit_words(str(abs(value)))
    # num2words writes "one thousand, two hundred": a comma there would be a clause cut and a pause.
    return words.replace(",", "")


def _spoken_number(sign: str | None, integer: str, fraction: str | None, *, year: bool = False) -> str:
    """A number as written: optional sign, integer part (maybe with thousands commas), fraction."""
    digits = integer.replace(",", "")
    if not digits:
        whole = ""  # ".5"
    elif len(digits) > LONG_DIGIT_RUN or (len(digits) > 1 and digits[0] == "0" and not fraction):
        whole = digit_words(digits)  # an ID, a card number, "007": read as written
    elif year and not sign and not fraction and len(integer) == 4 and 1500 <= int(digits) <= 2099:
        whole = year_words(int(digits))
    else:
        whole = number_words(int(digits))
    spoken = f"{whole} point {digit_words(fraction)}".strip() if fraction else whole
    return f"minus {spoken}" if sign else spoken


def _captured_number(text: str) -> tuple[str, bool]:
    """A number a rule captured with ``_NUM``, spoken, and whether it is exactly one (singular)."""
    parts = _NUMBER_PARTS.fullmatch(text)
    assert parts is not None, "rules capture their numbers with _NUM"
    is_one = parts["integer"] == "1" and not parts["fraction"]
    return _spoken_number(parts["sign"], parts["integer"], parts["fraction"]), is_one


# --- verbalizing -------------------------------------------------------------------------------

# Private use: clean_characters removes every such code point, so this one can only be ours.
_DROPPED = "\ue000"

_INT = r"\d{1,3}(?:,\d{3})+(?!\d)|\d+"
_NUM = rf"[-−]?(?:{_INT})(?:\.\d+)?"
_NUMBER_PARTS = re.compile(rf"(?P<sign>[-−])?(?P<integer>{_INT})(?:\.(?P<fraction>\d+))?")
_START = r"(?<![\w.,])"  # a number not glued to a word or to another number
# Spaces before a symbol, matched from the first one only: a bare "[ \t]*" would be tried again at
# every space of a long run (10,000 spaces took 3 s).
_SPACES_BEFORE = r"(?<![ \t])[ \t]*"
_END = r"(?![^\W_])"  # a unit or suffix not followed by a letter or digit

_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _verbalize_line(line: str) -> str:
    shouting = _is_shouting(line)
    line = _KEYCAP.sub(r"\1", line)  # "5️⃣" is a digit before it is an emoji
    if not line.isascii():  # every emoji is outside ASCII; replace_emoji costs a tokenizer pass
        line = emoji.replace_emoji(line, replace=_DROPPED)
    for pattern, speak in _RULES:
        line = pattern.sub(speak, line)
    if not shouting:
        line = _ABBREVIATION.sub(_spell_abbreviation, line)
    line = "".join(_DROPPED if _unspeakable(char) else char for char in line)
    return _DROPPED_RUN.sub(_close_gap, line)


_KEYCAP = re.compile("(\\d)\ufe0f?\u20e3")


def _speak_email(match: re.Match[str]) -> str:
    local = _EMAIL_SEPARATOR.sub(lambda found: f" {_EMAIL_SEPARATORS[found.group(0)]} ", match["local"])
    return f"{local} at {_spoken_host(match['domain'])}".lower()


_EMAIL_SEPARATORS = {".": "dot", "_": "underscore", "-": "dash", "+": "plus"}
_EMAIL_SEPARATOR = re.compile(r"[._+-]")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_EMAIL = re.compile(
    rf"(?<![\w.+-])(?P<local>[A-Za-z0-9](?:[A-Za-z0-9._+-]*[A-Za-z0-9])?)@"
    rf"(?P<domain>(?:{_LABEL}\.)+[A-Za-z]{{2,}})(?![\w-])"
)


def _speak_url(match: re.Match[str]) -> str:
    """The host and a short path; never the scheme, "www.", port, query or fragment.

    A path of more than two parts, or with a long number or odd characters (an ID, a tracking
    token), is left out: "example dot com" says where; a spoken hash says nothing.
    """
    url = match.group(0)
    kept = url.rstrip(".,;:!?)]}'\"”’")
    try:
        parts = urlsplit(kept if "://" in kept else f"//{kept}")
        host = (parts.hostname or "").removeprefix("www.")
    except ValueError:  # a malformed host ("http://[::1" without "]")
        return url
    if not host:
        return url
    spoken = _spoken_host(host)
    segments = [segment for segment in parts.path.split("/") if segment]
    if len(segments) <= 2 and all(map(_SPOKEN_PATH_SEGMENT.fullmatch, segments)):
        spoken += "".join(f" slash {_PATH_PUNCTUATION.sub(_path_word, segment)}" for segment in segments)
    return spoken.lower() + url[len(kept) :]


def _spoken_host(host: str) -> str:
    return " dot ".join(host.split("."))


def _path_word(match: re.Match[str]) -> str:
    return " dot " if match.group(0) == "." else " "


_SPOKEN_PATH_SEGMENT = re.compile(r"(?!.*\d{5})[A-Za-z0-9._-]{1,30}")
_PATH_PUNCTUATION = re.compile(r"[._-]")
# Bare domains ("example.com") only with these endings, written in lower case: "home.Me" is a
# missing space after a full stop, not a domain.
_COMMON_TLDS = "com|org|net|edu|gov|io|dev|ai|app|co|uk|us|de|fr|eu|ca|au|info|me|tv"
_URL = re.compile(
    rf"(?<![\w@.-])(?:(?i:(?:https?|ftp)://|www\.)[^\s<>\"]+"
    rf"|(?:{_LABEL}\.)+(?:{_COMMON_TLDS})(?![\w-])(?:/[^\s<>\"]*)?)"
)


def _speak_iso_date(match: re.Match[str]) -> str:
    try:
        date = datetime.date(int(match["year"]), int(match["month"]), int(match["day"]))
    except ValueError:
        return match.group(0)  # not a date ("2024-13-45"): the number rules read it
    spoken = f"{calendar.month_name[date.month]} {ordinal_words(date.day)}, {year_words(date.year)}"
    if match["hour"]:
        spoken += " at " + _time_words(int(match["hour"]), match["minute"], match["second"], None)
    return spoken


_ISO_DATE = re.compile(
    r"(?<![\w.-])(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"
    r"(?:T(?P<hour>[01]\d|2[0-3]):(?P<minute>[0-5]\d)(?::(?P<second>[0-5]\d)(?:\.\d+)?)?"
    r"(?:Z|[+-]\d{2}:?\d{2})?)?(?![\w-])"
)


def _speak_time(match: re.Match[str]) -> str:
    if not match["minute"] and not match["meridiem"]:
        return match.group(0)  # a bare number, not a time
    meridiem = f"{match['meridiem'].lower()} m" if match["meridiem"] else None
    return _time_words(int(match["hour"]), match["minute"], match["second"], meridiem)


def _time_words(hour: int, minute: str | None, second: str | None, meridiem: str | None) -> str:
    """10:30 ten thirty, 10:05 ten oh five, 10:00 ten o'clock, 14:00 fourteen hundred."""
    minutes = int(minute or 0)
    if minutes:
        spoken = f"{number_words(hour)} {'oh ' if minutes < 10 else ''}{number_words(minutes)}"
    elif meridiem:
        spoken = number_words(hour)
    elif hour == 0:
        spoken = "midnight"
    else:
        spoken = number_words(hour) + (" hundred" if hour > 12 else " o'clock")
    if second and int(second):
        spoken += f" and {number_words(int(second))} second{'' if int(second) == 1 else 's'}"
    return f"{spoken} {meridiem}" if meridiem else spoken


# "10:30", "10:30:15", "10:30 pm", "10pm", "7 a.m." (a dot that may end the sentence is kept).
_TIME = re.compile(
    r"(?<![\w.,:])(?P<hour>[01]?\d|2[0-3])(?::(?P<minute>[0-5]\d)(?::(?P<second>[0-5]\d))?)?"
    r"(?:[ \t]?(?P<meridiem>[AaPp])(?:\.[Mm](?=\.)|\.?[Mm])(?![^\W_])|(?![\w:]))"
)

# Currency -> (one, many, one hundredth, many hundredths; None where no minor unit is said).
# Hand-written: num2words' to="currency" reads an int as cents and knows no yen or yuan.
_CURRENCIES: dict[str, tuple[str, str, str | None, str | None]] = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", None, None),
    "₹": ("rupee", "rupees", "paisa", "paise"),
    "AUD": ("Australian dollar", "Australian dollars", "cent", "cents"),
    "CAD": ("Canadian dollar", "Canadian dollars", "cent", "cents"),
    "CHF": ("Swiss franc", "Swiss francs", "centime", "centimes"),
    "CNY": ("yuan", "yuan", None, None),
}
_CURRENCY_CODES = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹"}
_SCALES = {"k": "thousand", "m": "million", "mn": "million", "b": "billion", "bn": "billion"}


def _speak_money(match: re.Match[str]) -> str:
    """$5.50 five dollars and fifty cents, €10 ten euros, $1.5m one point five million dollars."""
    if match["amount"] is not None:
        currency, amount, scale = match["symbol"] or match["code"], match["amount"], match["scale"]
    else:  # "10 €", "20 USD"
        currency, amount, scale = match["symbol_after"] or match["code_after"], match["amount_after"], None
    one, many, minor_one, minor_many = _CURRENCIES[_CURRENCY_CODES.get(currency, currency)]
    parts = _NUMBER_PARTS.fullmatch(amount)
    assert parts is not None, "amounts are captured with _NUM"
    minus = "minus " if parts["sign"] or match["sign"] else ""
    integer, fraction = parts["integer"], parts["fraction"]
    if scale:
        return f"{minus}{_spoken_number(None, integer, fraction)} {_SCALES.get(scale.lower(), scale)} {many}"
    unit = one if integer == "1" else many
    if not fraction or not fraction.strip("0"):
        return f"{minus}{_spoken_number(None, integer, None)} {unit}"
    if len(fraction) == 2 and minor_one and minor_many:
        cents = int(fraction)
        spoken_cents = f"{number_words(cents)} {minor_one if cents == 1 else minor_many}"
        if not integer.strip("0"):
            return minus + spoken_cents
        return f"{minus}{_spoken_number(None, integer, None)} {unit} and {spoken_cents}"
    return f"{minus}{_spoken_number(None, integer, fraction)} {many}"


_CODES = "|".join([*_CURRENCY_CODES, *(code for code in _CURRENCIES if code.isalpha())])
_MONEY = re.compile(
    rf"(?<![\w.,])(?:(?P<sign>[-−])?(?:(?P<symbol>[$€£¥₹])[ \t]?|(?P<code>{_CODES})[ \t]?)(?P<amount>{_NUM})"
    r"(?:[ \t]?(?P<scale>thousand|million|billion|trillion|[kKmMbB]|mn|bn)(?![^\W_]))?"
    rf"|(?P<amount_after>{_NUM})[ \t]?(?:(?P<symbol_after>[$€£¥₹])|(?P<code_after>{_CODES})(?![^\W_])))"
)


def _speak_percent(match: re.Match[str]) -> str:
    return f"{_captured_number(match['number'])[0]} percent"


_PERCENT = re.compile(rf"{_START}(?P<number>{_NUM})[ \t]?%")

_TEMPERATURE_SCALES = {
    "C": " Celsius",
    "F": " Fahrenheit",
    "K": " Kelvin",
    "℃": " Celsius",
    "℉": " Fahrenheit",
}


def _speak_temperature(match: re.Match[str]) -> str:
    spoken, is_one = _captured_number(match["number"])
    scale = _TEMPERATURE_SCALES.get((match["scale"] or match["symbol"] or "").upper(), "")
    return f"{spoken} degree{'' if is_one else 's'}{scale}"


_TEMPERATURE = re.compile(
    rf"{_START}(?P<number>{_NUM})[ \t]?(?:[°º][ \t]?(?P<scale>[CcFfK])?|(?P<symbol>[℃℉])){_END}"
)

# Unit as written after a number -> (one, many). Hand-written: no installed library has them.
_UNITS: dict[str, tuple[str, str]] = {
    "mm": ("millimeter", "millimeters"),
    "cm": ("centimeter", "centimeters"),
    "m": ("meter", "meters"),
    "km": ("kilometer", "kilometers"),
    "m²": ("square meter", "square meters"),
    "km²": ("square kilometer", "square kilometers"),
    "m³": ("cubic meter", "cubic meters"),
    "µm": ("micrometer", "micrometers"),
    "ft": ("foot", "feet"),
    "mi": ("mile", "miles"),
    "µg": ("microgram", "micrograms"),
    "mg": ("milligram", "milligrams"),
    "g": ("gram", "grams"),
    "kg": ("kilogram", "kilograms"),
    "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"),
    "ml": ("milliliter", "milliliters"),
    "mL": ("milliliter", "milliliters"),
    "l": ("liter", "liters"),
    "L": ("liter", "liters"),
    "µs": ("microsecond", "microseconds"),
    "ms": ("millisecond", "milliseconds"),
    "sec": ("second", "seconds"),
    "secs": ("second", "seconds"),
    "min": ("minute", "minutes"),
    "mins": ("minute", "minutes"),
    "h": ("hour", "hours"),
    "hr": ("hour", "hours"),
    "hrs": ("hour", "hours"),
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"),
    "mph": ("mile per hour", "miles per hour"),
    "m/s": ("meter per second", "meters per second"),
    "KB": ("kilobyte", "kilobytes"),
    "kB": ("kilobyte", "kilobytes"),
    "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"),
    "TB": ("terabyte", "terabytes"),
    "MB/s": ("megabyte per second", "megabytes per second"),
    "Mbps": ("megabit per second", "megabits per second"),
    "Gbps": ("gigabit per second", "gigabits per second"),
    "Hz": ("hertz", "hertz"),
    "kHz": ("kilohertz", "kilohertz"),
    "MHz": ("megahertz", "megahertz"),
    "GHz": ("gigahertz", "gigahertz"),
    "W": ("watt", "watts"),
    "kW": ("kilowatt", "kilowatts"),
    "kWh": ("kilowatt hour", "kilowatt hours"),
    "V": ("volt", "volts"),
    "mAh": ("milliamp hour", "milliamp hours"),
    "x": ("times", "times"),
}


def _speak_unit(match: re.Match[str]) -> str:
    spoken, is_one = _captured_number(match["number"])
    one, many = _UNITS[match["unit"].replace("μ", "µ")]  # Greek mu typed for the micro sign
    return f"{spoken} {one if is_one else many}"


_UNIT = re.compile(
    rf"{_START}(?P<number>{_NUM})[ \t]?(?P<unit>"
    + "|".join(re.escape(unit).replace("µ", "[µμ]") for unit in sorted(_UNITS, key=len, reverse=True))
    + rf"){_END}"
)


def _speak_ordinal(match: re.Match[str]) -> str:
    digits = match["integer"].replace(",", "")
    return ordinal_words(int(digits)) if len(digits) <= LONG_DIGIT_RUN else digit_words(digits)


_ORDINAL = re.compile(rf"{_START}(?P<integer>{_INT})(?:st|nd|rd|th|ST|ND|RD|TH){_END}")


def _speak_decade(match: re.Match[str]) -> str:
    """1990s nineteen nineties, '80s eighties, 1900s nineteen hundreds."""
    spoken = year_words(int(match["full"])) if match["full"] else number_words(int(match["short"]))
    return spoken[:-1] + "ies" if spoken.endswith("y") else spoken + "s"


_DECADE = re.compile(r"(?<![\w.,])(?:(?P<full>1\d{2}0|20\d0)|['’]?(?P<short>[1-9]0))s(?![^\W_])")


def _speak_phone(match: re.Match[str]) -> str:
    groups = re.findall(r"\d+", match.group(0))
    if sum(map(len, groups)) < 7:
        return match.group(0)  # "+1 2 3": not a phone number
    spoken = ", ".join(map(digit_words, groups))
    return f"plus {spoken}" if match.group(0).startswith("+") else spoken


# "+1 555 123 4567", "+44 (20) 7946 0958", "(555) 123-4567", "555-123-4567", "555.123.4567", "555-1234".
_PHONE = re.compile(
    r"(?<![\w+.,])(?:\+\d{1,3}(?:[ \t.-]?\(?\d{1,4}\)?){2,5}|\(\d{3}\)[ \t]?\d{3}[ \t.-]\d{4}"
    r"|\d{3}([.-])\d{3}\1\d{4}|\d{3}-\d{4})(?![\w-])"
)


def _speak_dotted(match: re.Match[str]) -> str:
    """A version, 3.12.1 three point twelve point one; an IPv4 address with "dot"."""
    parts = match.group(0).split(".")
    separator = " dot " if len(parts) == 4 else " point "
    return separator.join(_spoken_number(None, part, None) for part in parts)


_DOTTED = re.compile(r"(?<![\w.,])\d+(?:\.\d+){2,}(?!\w|\.\d)")


def _speak_number(match: re.Match[str]) -> str:
    if match["fraction_only"]:
        return _spoken_number(match["sign"], "", match["fraction_only"])
    return _spoken_number(match["sign"], match["integer"], match["fraction"], year=True)


# A number; one of 4 digits from 1500 to 2099 reads as a year ("in 1999", "2024"): in prose those
# are years far more often than counts, and Whisper validation accepts either reading.
_NUMBER = re.compile(
    rf"(?<!\w)(?P<sign>(?<![\w.])[-−](?=\.?\d))?(?:(?P<integer>{_INT})(?:\.(?P<fraction>\d+))?"
    r"|(?<![\w.])\.(?P<fraction_only>\d+))"
)


def _said_as(word: str) -> Callable[[re.Match[str]], str]:
    """A replacement saying ``word`` for a symbol (whose own spaces are in the match), with one
    space on each side where there is text."""

    def speak(match: re.Match[str]) -> str:
        text, start, end = match.string, match.start(), match.end()
        before = " " if start > 0 and text[start - 1] not in _OPENING else ""
        after = " " if end < len(text) and (text[end].isalnum() or text[end] in _OPENING) else ""
        return f"{before}{word}{after}"

    return speak


def _symbol(pattern: str, word: str) -> _Rule:
    return re.compile(rf"{_SPACES_BEFORE}(?:{pattern})[ \t]*"), _said_as(word)


def _replaced_by(replacement: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: replacement


_OPENING = frozenset("([{\"'“‘")
# snake_case, table pipes, Windows paths: a pause at most, never "underscore".
_SEPARATORS = re.compile(rf"{_SPACES_BEFORE}[_|\\]+[ \t]*")

# In order: each rule sees what those before it left (URLs and e-mails before the symbol rules
# can break them up, money and units before bare numbers, symbols after numbers).
_RULES: tuple[_Rule, ...] = (
    (_EMAIL, _speak_email),
    (_URL, _speak_url),
    (_ISO_DATE, _speak_iso_date),
    (_TIME, _speak_time),
    (_MONEY, _speak_money),
    (_PERCENT, _speak_percent),
    (_TEMPERATURE, _speak_temperature),
    (_UNIT, _speak_unit),
    (_ORDINAL, _speak_ordinal),
    (_DECADE, _speak_decade),
    (_PHONE, _speak_phone),
    (_DOTTED, _speak_dotted),
    _symbol(r"#(?=[ \t]?\d)|№|\bNo\.(?=[ \t]?\d)", "number"),
    _symbol(r"§", "section"),
    _symbol(r"~(?=[ \t]?[-−]?\d)", "about"),
    (re.compile(r"(?<=\d)[ \t]?–[ \t]?(?=\d)"), _replaced_by(" to ")),  # "10–20", an en-dash range
    (re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])"), _replaced_by(" ")),  # "iPhone15", "3D"
    (_NUMBER, _speak_number),
    _symbol(r"&", "and"),
    _symbol(r"\+", "plus"),
    _symbol(r"±", "plus or minus"),
    _symbol(r"(?<=\s)−(?=\s)", "minus"),
    _symbol(r"=", "equals"),
    _symbol(r"×", "times"),
    _symbol(r"%", "percent"),
    _symbol(r"@", "at"),
    (_SEPARATORS, _replaced_by(" ")),
)

# Markup and bullets; pictographs (So), modifiers (Sk), maths (Sm) and currency signs without an
# amount (Sc) go by category; the variation selectors and keycap marks left by removed emoji.
_MARKUP = frozenset("#*`^~<>•·‣◦\u20e3")
_SYMBOL_CATEGORIES = frozenset({"So", "Sk", "Sm", "Sc"})


@lru_cache(maxsize=8192)
def _unspeakable(char: str) -> bool:
    if char in _MARKUP or "\ufe00" <= char <= "\ufe0f":
        return True
    return unicodedata.category(char) in _SYMBOL_CATEGORIES


_DROPPED_RUN = re.compile(rf"{_SPACES_BEFORE}{_DROPPED}(?:[ \t]*{_DROPPED})*[ \t]*")
_CLOSING = frozenset(".,!?;:)]}\"'”’…")


def _close_gap(match: re.Match[str]) -> str:
    """Where removed characters were: one space between words, none at an edge or before punctuation."""
    text, start, end = match.string, match.start(), match.end()
    if start == 0 or end == len(text) or text[end] in _CLOSING:
        return ""
    spaced = " " in match.group(0) or "\t" in match.group(0)
    return " " if spaced or (text[start - 1].isalnum() and text[end].isalnum()) else ""


# --- abbreviations -----------------------------------------------------------------------------

# Hand-written: capitals that are a shouted word, not initials ("I said NO"). Ambiguous ones that
# are initials more often (IT, US, WHO) are not here.
_SHOUTED_WORDS = frozenset(
    {
        "AM", "AN", "AND", "ARE", "AS", "AT", "BE", "BUT", "BY", "DO", "GO", "HE", "HI", "IF", "IN",
        "IS", "ME", "MY", "NO", "NOT", "NOW", "OF", "OH", "OK", "ON", "OR", "OUR", "OUT", "SO", "THE",
        "TO", "UP", "WE", "YES", "YOU",
    }
)  # fmt: skip
_ROMAN_NUMERAL = re.compile(r"X{0,3}(?:IX|IV|V?I{0,3})")  # "World War II", "Henry VIII"
_ABBREVIATION = re.compile(r"(?<![^\W_])(?P<letters>[A-Z]{2,})(?P<plural>['’]?s)?(?![^\W_])")
_CAPITAL_WORD = re.compile(r"(?<![^\W_])[A-Z]{2,}(?![^\W_])")


def _spell_abbreviation(match: re.Match[str]) -> str:
    """FBI F B I, GPUs G P U's; NASA stays a word (four letters or more, with a vowel)."""
    letters = match["letters"]
    pronounceable = len(letters) >= 4 and any(vowel in letters for vowel in "AEIOU")
    if pronounceable or letters in _SHOUTED_WORDS or _ROMAN_NUMERAL.fullmatch(letters):
        return match.group(0)
    return " ".join(letters) + ("'s" if match["plural"] else "")


def _is_shouting(line: str) -> bool:
    """A line in capitals throughout ("WE ARE OPEN TODAY") is shouted, not a row of initials."""
    return not any(char.islower() for char in line) and len(_CAPITAL_WORD.findall(line)) >= 2
