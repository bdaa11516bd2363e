import pytest
from django.core.exceptions import ValidationError

from messages_app.validators import normalize_phone_number, validate_content

# --- phone numbers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+90 555 111 22 33", "+905551112233"),
        ("+905551112233", "+905551112233"),
        ("  +90 555 111 22 33  ", "+905551112233"),
        ("+90 (555) 111-22-33", "+905551112233"),
        ("+90.555.111.22.33", "+905551112233"),
        ("+44 20 7946 0000", "+442079460000"),
        ("+90 212 111 22 33", "+902121112233"),
    ],
)
def test_phone_number_is_normalised_to_e164(raw, expected):
    assert normalize_phone_number(raw) == expected


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param("+90 555 ABC 22 33", "invalid", id="letters"),
        pytest.param("+1-800-FLOWERS", "invalid", id="vanity-letters"),
        pytest.param("+90" + "5" * 40, "invalid", id="far-too-long"),
        pytest.param("+905551112233333", "invalid", id="too-long-for-country"),
        pytest.param("5551112233", "invalid", id="no-country-code"),
        pytest.param("05551112233", "invalid", id="national-format"),
        pytest.param("+90 123 456 78 90", "invalid", id="invalid-for-country"),
        pytest.param("+90 555 111 22", "invalid", id="too-short-for-country"),
        pytest.param("+", "invalid", id="plus-only"),
        pytest.param("", "required", id="empty"),
        pytest.param("   ", "required", id="whitespace"),
        pytest.param(None, "required", id="none"),
        pytest.param(905551112233, "required", id="not-a-string"),
    ],
)
def test_invalid_phone_numbers_are_rejected(raw, code):
    with pytest.raises(ValidationError) as excinfo:
        normalize_phone_number(raw)
    assert excinfo.value.code == code
    assert excinfo.value.messages  # a reason a person can act on


# --- content ----------------------------------------------------------------------


def test_content_is_returned_unchanged():
    text = "  Hello,\nworld!  "
    assert validate_content(text) == text


def test_content_at_the_limit_is_accepted_and_one_more_is_rejected(settings):
    settings.MESSAGE_MAX_LENGTH = 5
    assert validate_content("abcde") == "abcde"
    with pytest.raises(ValidationError) as excinfo:
        validate_content("abcdef")
    assert excinfo.value.code == "max_length"
    assert "6 characters" in excinfo.value.messages[0]
    assert "limit is 5" in excinfo.value.messages[0]


def test_emoji_are_counted_as_characters_not_bytes(settings):
    settings.MESSAGE_MAX_LENGTH = 1000
    emoji = "\N{GRINNING FACE}"  # 4 bytes in UTF-8, 2 code units in UTF-16, 1 character
    assert validate_content(emoji * 1000) == emoji * 1000
    with pytest.raises(ValidationError) as excinfo:
        validate_content(emoji * 1001)
    assert excinfo.value.code == "max_length"


def test_non_ascii_text_at_the_limit_is_accepted(settings):
    settings.MESSAGE_MAX_LENGTH = 10
    assert validate_content("çğıöşüÇĞİÖ") == "çğıöşüÇĞİÖ"
    with pytest.raises(ValidationError):
        validate_content("çğıöşüÇĞİÖŞ")


def test_the_limit_is_read_at_call_time(settings):
    settings.MESSAGE_MAX_LENGTH = 3
    with pytest.raises(ValidationError):
        validate_content("abcd")
    settings.MESSAGE_MAX_LENGTH = 4
    assert validate_content("abcd") == "abcd"


@pytest.mark.parametrize("blank", ["", " ", "\n\t  \r\n", "\u3000"])
def test_blank_content_is_rejected(blank):
    with pytest.raises(ValidationError) as excinfo:
        validate_content(blank)
    assert excinfo.value.code == "blank"


@pytest.mark.parametrize("not_text", [None, 123, ["hi"]])
def test_non_string_content_is_rejected(not_text):
    with pytest.raises(ValidationError):
        validate_content(not_text)


@pytest.mark.parametrize("text", ["\x00", "hello\x00world", "hi\x00"])
def test_nul_characters_are_rejected(text):
    with pytest.raises(ValidationError) as excinfo:
        validate_content(text)
    assert excinfo.value.code == "null_characters_not_allowed"


# --- what a person can read: something visible, no control characters but \n and \t ------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        pytest.param("\u200b\u200b", "invisible", id="zero-width-spaces"),
        pytest.param("\ufeff", "invisible", id="byte-order-mark"),
        pytest.param("\u200d\u2060\u200e", "invisible", id="joiners-and-bidi-marks"),
        pytest.param("\u0301", "invisible", id="combining-accent-without-a-letter"),
        pytest.param("\ufe0f\ufe0f", "invisible", id="variation-selectors"),
        pytest.param("\u3164\u115f", "invisible", id="hangul-fillers"),
        pytest.param("\u2800", "invisible", id="blank-braille-pattern"),
        pytest.param("\ue000", "invisible", id="private-use"),
        pytest.param("\u200b \u200b\n", "invisible", id="invisible-and-whitespace"),
        pytest.param("\x1b[31mred\x1b[0m", "control_characters", id="ansi-escape"),
        pytest.param("\x07", "control_characters", id="bell-alone"),
        pytest.param("a\x08b", "control_characters", id="backspace"),
        pytest.param("one\rtwo", "control_characters", id="carriage-return"),
        pytest.param("one\r\ntwo", "control_characters", id="crlf"),
        pytest.param("a\x0bb\x0cc", "control_characters", id="vertical-tab-form-feed"),
        pytest.param("a\x7f", "control_characters", id="delete"),
        pytest.param("a\x85b", "control_characters", id="c1-next-line"),
        pytest.param("a\x9b2J", "control_characters", id="c1-csi"),
    ],
)
def test_content_without_anything_visible_or_with_control_characters_is_rejected(text, code):
    with pytest.raises(ValidationError) as excinfo:
        validate_content(text)
    assert excinfo.value.code == code
    assert excinfo.value.messages


def test_the_control_character_is_named_with_its_position():
    with pytest.raises(ValidationError) as excinfo:
        validate_content("ok\x1b[0m")
    assert "U+001B at position 3" in excinfo.value.messages[0]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("line one\nline two\tand a tab", id="newline-and-tab"),
        pytest.param("\u200bhi\u200b", id="zero-width-space-around-text"),
        pytest.param("\U0001f468\u200d\U0001f469\u200d\U0001f467", id="emoji-joined-by-zwj"),
        pytest.param("\u2764\ufe0f", id="emoji-with-variation-selector"),
        pytest.param("e\u0301", id="letter-with-combining-accent"),
        pytest.param("\u0645\u0631\u062d\u0628\u0627 \u200f", id="arabic-with-bidi-mark"),
        pytest.param("\u0967", id="devanagari-digit"),
        pytest.param("-", id="punctuation"),
        pytest.param("\u20ac", id="currency-symbol"),
        pytest.param("\t.\n", id="a-dot-between-whitespace"),
    ],
)
def test_readable_content_is_accepted_unchanged(text):
    assert validate_content(text) == text
