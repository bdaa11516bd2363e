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
