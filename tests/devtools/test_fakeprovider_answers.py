"""The chain of rules that decides the provider's answer, called directly."""

from __future__ import annotations

import uuid

import pytest

from devtools.fakeprovider.answers import ProviderRequest, auth_key_matches, decide_answer, draw_turn
from devtools.fakeprovider.faults import Faults
from devtools.fakeprovider.state import FakeProviderState

GOOD_BODY = {"to": "+905551112233", "content": "hi"}


def answer(state: FakeProviderState, body: object = GOOD_BODY, *, key: str | None = None, sent_key: str | None = None):
    asked = ProviderRequest.parse(body, auth_ok=auth_key_matches(sent_key, state.auth_key), idempotency_key=key)
    return decide_answer(asked, draw_turn(state), state)


def state_with(auth_key: str | None = None, **faults) -> FakeProviderState:
    return FakeProviderState(Faults(**faults), auth_key)


def test_a_good_message_is_accepted_with_a_new_uuid4():
    state = state_with()
    first, second = answer(state), answer(state)
    assert (first.status, first.body["message"]) == (202, "Accepted")
    assert uuid.UUID(first.message_id).version == 4
    assert str(uuid.UUID(first.message_id)) == first.message_id
    assert first.message_id != second.message_id


def test_a_wrong_key_is_refused_before_the_body_is_looked_at():
    assert answer(state_with("key"), body=None, sent_key="nope").status == 401
    assert answer(state_with("key"), body=None, sent_key=None).status == 401
    assert answer(state_with("key"), body=None, sent_key="key").status == 400


@pytest.mark.parametrize("body", [None, {}, {"to": "+90"}, {"to": 90, "content": "x"}, ["+90", "x"]])
def test_a_bad_body_is_refused_before_any_fault(body):
    state = state_with(error_rate=1.0, script=[503])
    assert answer(state, body).status == 400
    assert state.faults.script == []  # the step is played (used up) by the request it fell on


def test_a_scripted_timeout_is_held_then_answered_504():
    state = state_with(script=["timeout", 202], timeout_ms=2500)
    held = answer(state)
    assert (held.status, held.hold_seconds, held.message_id) == (504, 2.5, None)
    assert answer(state).status == 202


@pytest.mark.parametrize(("status", "retry_after"), [(429, "2.5"), (503, "2.5"), (500, None)])
def test_errors_carry_retry_after_on_429_and_503_only(status, retry_after):
    state = state_with(error_rate=1.0, error_status=status, retry_after=2.5)
    failed = answer(state)
    assert (failed.status, failed.message_id) == (status, None)
    assert (failed.headers or {}).get("Retry-After") == retry_after


@pytest.mark.parametrize(("retry_after", "header"), [(2, "2"), (0.25, "0.25"), (999_999_999, "999999999")])
def test_retry_after_is_sent_as_delta_seconds(retry_after, header):
    state = state_with(error_rate=1.0, error_status=429, retry_after=retry_after)
    assert answer(state).headers == {"Retry-After": header}


def test_a_scripted_status_wins_over_the_error_rate():
    state = state_with(error_rate=1.0, script=[201])
    assert answer(state).status == 201
    assert answer(state).status == 500


def test_missing_message_id_accepts_and_remembers_nothing():
    state = state_with(missing_message_id=True)
    accepted = answer(state, key="k")
    assert (accepted.status, accepted.message_id, "messageId" in accepted.body) == (202, None, False)
    assert state.accepted == {}


def test_a_repeated_key_gets_the_first_message_id_as_a_duplicate():
    state = state_with()
    first = answer(state, key="k")
    repeat = answer(state, key="k")
    other = answer(state, key="other")
    assert (repeat.message_id, repeat.duplicate) == (first.message_id, True)
    assert not first.duplicate and not other.duplicate and other.message_id != first.message_id
    assert state.duplicates_dropped == 1
