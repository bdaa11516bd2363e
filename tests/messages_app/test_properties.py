"""Properties of phone number and content validation, checked with Hypothesis
through the API: whatever is accepted is stored normalised (a phone number in
E.164, exactly as phonenumbers formats it; content byte for byte as sent) and
handed to the provider unchanged; whatever is rejected is a 400 naming the
field and stores nothing.

The examples of one test share its database transaction, so each example
starts by deleting the messages (and emptying the test provider's outbox) the
one before left.
"""

from __future__ import annotations

import json
import unicodedata

import phonenumbers
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from rest_framework.test import APIClient

from dispatcher.engine.pipeline import run_tick_here
from dispatcher.engine.providers import locmem
from messages_app.models import Message
from tests.factories import make_user, token_for

pytestmark = pytest.mark.django_db

CREATE = "/api/messages/"
PHONE = "+905551112233"
# Short, so generated text often lands on both sides of the limit.
MAX_LENGTH = 20

PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    # One database transaction and client for all examples; each cleans up first.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NUMBER_TYPES = [
    PhoneNumberType.MOBILE,
    PhoneNumberType.FIXED_LINE,
    PhoneNumberType.FIXED_LINE_OR_MOBILE,
    PhoneNumberType.TOLL_FREE,
    PhoneNumberType.VOIP,
    PhoneNumberType.PERSONAL_NUMBER,
    PhoneNumberType.UAN,
]
# Every (region, type) phonenumbers has an example number for: about 1,100 from 245 regions.
EXAMPLE_NUMBERS = [
    example
    for region in sorted(phonenumbers.SUPPORTED_REGIONS)
    for number_type in NUMBER_TYPES
    if (example := phonenumbers.example_number_for_type(region, number_type)) is not None
]

SEPARATORS = st.sampled_from(["", " ", "-", ".", "  "])


@st.composite
def formatted_numbers(draw) -> tuple[phonenumbers.PhoneNumber, str]:
    """A valid number, written the way people write them: +country code, then the
    national digits in groups of any size, separated by spaces, dashes or dots,
    one group perhaps in parentheses, the whole perhaps padded with whitespace."""
    number = draw(st.sampled_from(EXAMPLE_NUMBERS))
    digits = phonenumbers.national_significant_number(number)
    groups = []
    while digits:
        size = draw(st.integers(min_value=1, max_value=4))
        groups.append(digits[:size])
        digits = digits[size:]
    if draw(st.booleans()):
        index = draw(st.integers(min_value=0, max_value=len(groups) - 1))
        groups[index] = f"({groups[index]})"
    text = f"+{number.country_code}{draw(SEPARATORS)}"
    for group in groups:
        text += group + draw(SEPARATORS)
    padding = st.sampled_from(["", " ", "\t", "\n"])
    return number, draw(padding) + text.rstrip() + draw(padding)


@pytest.fixture
def root_client() -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(make_user(username='root', superuser=True))}")
    return client


def start_example() -> None:
    Message.objects.all().delete()
    locmem.reset()


def post_message(client: APIClient, phone, content):
    # Encoded here, not by the test client: json.dumps escapes what UTF-8 cannot
    # carry (a lone surrogate), as a client's JSON library may send it.
    body = json.dumps({"recipient_phone_number": phone, "content": content})
    return client.post(CREATE, body, content_type="application/json")


def assert_sent_unchanged(to: str, content: str) -> None:
    event("accepted")  # --hypothesis-show-statistics shows how examples split
    run_tick_here(force=True)
    assert [(entry.to, entry.content) for entry in locmem.outbox] == [(to, content)]


def assert_rejected(response, field: str) -> None:
    event("rejected")
    assert response.status_code == 400, response.content
    errors = response.json()
    assert errors.get(field), errors
    assert not Message.objects.exists()


# --- phone numbers ----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(example=formatted_numbers())
def test_a_valid_number_in_any_punctuation_is_stored_and_sent_in_e164(root_client, example):
    start_example()
    number, written = example
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)

    response = post_message(root_client, written, "hi")

    if len(written.strip()) > 32:
        # Longer than any number needs even with punctuation: refused before parsing.
        assert_rejected(response, "recipient_phone_number")
        return
    assert response.status_code == 201, (written, response.content)
    assert response.json()["recipient_phone_number"] == e164
    assert Message.objects.get().recipient_phone_number == e164
    assert_sent_unchanged(e164, "hi")


@st.composite
def near_valid_numbers(draw) -> str:
    """An example number in E.164 with one digit changed, added or dropped: valid
    or not depending on the country's numbering plan, so both answers come up."""
    e164 = phonenumbers.format_number(draw(st.sampled_from(EXAMPLE_NUMBERS)), PhoneNumberFormat.E164)
    position = draw(st.integers(min_value=1, max_value=len(e164) - 1))
    digit = draw(st.sampled_from("0123456789"))
    edit = draw(st.sampled_from(["change", "add", "drop"]))
    if edit == "change":
        return e164[:position] + digit + e164[position + 1 :]
    if edit == "add":
        return e164[:position] + digit + e164[position:]
    return e164[:position] + e164[position + 1 :]


PHONE_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="+0123456789 -().", max_size=24),
    near_valid_numbers(),
)


@PROPERTY_SETTINGS
@given(written=PHONE_TEXT)
def test_any_text_as_a_phone_number_is_stored_in_e164_or_rejected_storing_nothing(root_client, written):
    start_example()

    response = post_message(root_client, written, "hi")

    if response.status_code != 201:
        assert_rejected(response, "recipient_phone_number")
        return
    # Accepted: it is a valid number, stored as phonenumbers itself writes it in E.164.
    parsed = phonenumbers.parse(written.strip(), None)
    assert phonenumbers.is_valid_number(parsed)
    e164 = phonenumbers.format_number(parsed, PhoneNumberFormat.E164)
    assert Message.objects.get().recipient_phone_number == e164 == response.json()["recipient_phone_number"]
    assert_sent_unchanged(e164, "hi")


# --- content ------------------------------------------------------------------------------------


def acceptable_content(text: str) -> bool:
    """What the service promises to take: 1 to MESSAGE_MAX_LENGTH code points, no
    control character but line breaks and tabs, something visible (a letter, digit,
    punctuation or symbol that is not drawn blank), and text UTF-8 can store (no
    lone surrogate)."""
    return (
        len(text) <= MAX_LENGTH
        and not any(unicodedata.category(char) == "Cc" and char not in "\n\t" for char in text)
        and any(
            unicodedata.category(char)[0] in "LNPS" and char not in "\u115f\u1160\u3164\uffa0\u2800" for char in text
        )
        and not any(0xD800 <= ord(char) <= 0xDFFF for char in text)
    )


CONTENT = st.one_of(
    # Any code point, surrogates and controls included.
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=MAX_LENGTH + 5),
    st.text(alphabet=" \t\n\r\x00\u00a0\u2028\u3000", max_size=6),
    st.text(alphabet="e\u0301\U0001f600\u200d\ufe0f", min_size=MAX_LENGTH - 2, max_size=MAX_LENGTH + 2),
    st.sampled_from(["'); DROP TABLE messages_app_message;--", "<script>alert(1)</script>", "{{ 7*7 }}", "%s%n"]),
)


@PROPERTY_SETTINGS
@given(content=CONTENT)
def test_any_content_is_stored_and_sent_byte_for_byte_or_rejected_storing_nothing(root_client, settings, content):
    settings.MESSAGE_MAX_LENGTH = MAX_LENGTH
    start_example()

    response = post_message(root_client, PHONE, content)

    if not acceptable_content(content):
        assert_rejected(response, "content")
        return
    assert response.status_code == 201, (content, response.content)
    assert response.json()["content"] == content
    assert Message.objects.get().content.encode("utf-8") == content.encode("utf-8")
    assert_sent_unchanged(PHONE, content)


@PROPERTY_SETTINGS
@given(content=st.text(min_size=1, max_size=MAX_LENGTH).filter(acceptable_content), extra=st.integers(1, 5))
def test_content_over_the_limit_by_any_amount_is_rejected(root_client, settings, content, extra):
    settings.MESSAGE_MAX_LENGTH = MAX_LENGTH
    start_example()
    too_long = content * (MAX_LENGTH // len(content) + 1) + "x" * extra
    assume(len(too_long) > MAX_LENGTH)

    response = post_message(root_client, PHONE, too_long)

    assert_rejected(response, "content")
    assert response.json()["content"] == [f"Content is {len(too_long)} characters long; the limit is {MAX_LENGTH}."]
