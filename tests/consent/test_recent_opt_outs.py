"""The recent opt-outs in Redis: written before the opt-out commits, looked up right
before each send, and what happens without Redis."""

from __future__ import annotations

import logging
import time

import pytest
from django.conf import settings
from django.core.cache import caches
from django.db import transaction
from django.test import override_settings

from audit.services import Via
from consent.models import Consent
from consent.recent_opt_outs import number_recently_opted_out
from consent.services import consent_set, consents_opt_out_many
from dispatcher.engine.providers import locmem
from dispatcher.engine.providers.gate import REDIS_RETRY_SECONDS, shared_state_call
from dispatcher.engine.sending import send_one
from tests.factories import claimed_message, phone_number
from tests.processes import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def opt_out(number: str) -> None:
    consent_set(phone_number=number, status=Consent.Status.OPTED_OUT, method=Consent.Method.API, via=Via.API)


def test_an_opt_out_is_among_the_recent_ones_before_it_commits_and_an_opt_in_is_not():
    number, listed, opted_in = phone_number(), [phone_number(), phone_number()], phone_number()
    with transaction.atomic():
        opt_out(number)
        consents_opt_out_many(phone_numbers=listed, method=Consent.Method.CSV_IMPORT, via=Via.API)
        assert number_recently_opted_out(phone_number=number)
        assert all(number_recently_opted_out(phone_number=n) for n in listed)
    consent_set(phone_number=opted_in, status=Consent.Status.OPTED_IN, method=Consent.Method.API, via=Via.API)
    assert not number_recently_opted_out(phone_number=opted_in)


def test_a_send_whose_number_opted_out_after_its_chunk_began_asks_no_provider():
    locmem.reset()
    message, other = claimed_message(), claimed_message()
    opt_out(message.recipient_phone_number)  # after the claim: the chunk's check at its start did not see it

    result = send_one(message=message, provider=locmem.LocmemProvider())
    assert result.suppressed.startswith("The recipient opted out") and result.result is None
    assert locmem.outbox == []
    assert send_one(message=other, provider=locmem.LocmemProvider()).result is not None


def test_with_redis_unreachable_an_opt_out_is_recorded_and_sends_keep_to_the_chunks_check(caplog):
    locmem.reset()
    message = claimed_message()
    default = settings.CACHES["default"]
    unreachable = {
        **default,
        "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        "OPTIONS": {**default["OPTIONS"], "SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
    }
    with override_settings(CACHES={**settings.CACHES, "default": unreachable}), caplog.at_level(logging.WARNING):
        opt_out(message.recipient_phone_number)
        assert Consent.objects.get(phone_number=message.recipient_phone_number).status == Consent.Status.OPTED_OUT
        assert "could not add 1 number(s) to the recent opt-outs" in caplog.text
        # The send does not know (its chunk's check at the start is the only one left): it goes.
        assert send_one(message=message, provider=locmem.LocmemProvider()).result is not None
    # The gates' memory of the outage ends with the next question after REDIS_RETRY_SECONDS.
    time.sleep(REDIS_RETRY_SECONDS)
    assert shared_state_call(lambda: caches["default"].get("any") is None, lambda: False)
