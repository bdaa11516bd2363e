"""Suppression: no message reaches a number that opted out, whichever way it was queued;
the one confirmation of its own STOP does."""

from __future__ import annotations

import io
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from consent.inbound import InboundIn, inbound_receive
from consent.models import Consent
from consent.selectors import messages_to_suppress
from consent.services import consent_set, consents_opt_out_many
from dispatcher.engine.pipeline import send_chunk
from dispatcher.engine.providers import locmem
from messages_app.models import DeliveryAttempt, Message
from messages_app.transitions import messages_claim
from tests.factories import make_message, make_user

pytestmark = pytest.mark.django_db

NUMBER = "+12125550123"
OTHER = "+12125550124"
Status = Message.Status


def opt_out(number: str = NUMBER) -> None:
    consent_set(phone_number=number, status=Consent.Status.OPTED_OUT, method=Consent.Method.API, via="api")


def claim(*messages: Message) -> uuid.UUID:
    token = uuid.uuid4()
    messages_claim(message_ids=[m.pk for m in messages], claim_token=token, lease_seconds=60)
    return token


def test_creating_a_message_to_an_opted_out_number_is_422_naming_the_reason(api_client):
    opt_out()
    answer = api_client.post(
        "/api/messages/", {"recipient_phone_number": "+1 212 555 0123", "content": "Sale!"}, format="json"
    )
    assert answer.status_code == 422, answer.content
    assert "opted out" in answer.json()["recipient_phone_number"][0]
    assert not Message.objects.exists()
    # Opted back in: accepted again.
    consent_set(phone_number=NUMBER, status=Consent.Status.OPTED_IN, method="api", via="api")
    assert (
        api_client.post(
            "/api/messages/", {"recipient_phone_number": NUMBER, "content": "Hi"}, format="json"
        ).status_code
        == 201
    )


def test_the_seed_route_refuses_it_too(client_for):
    user = make_user(username="go", perms=["messages_app.view_message", "messages_app.add_message"])
    opt_out()
    answer = client_for(user).post("/messages", {"recipient_phone_number": NUMBER, "content": "x"}, format="json")
    assert answer.status_code == 422 and "opted out" in answer.json()["fail"]["reason"]


def test_bulk_queues_the_rest_and_lists_the_refused_by_index(api_client):
    opt_out()
    items = [{"recipient_phone_number": n, "content": "News"} for n in (OTHER, NUMBER, "+12125550125")]
    answer = api_client.post("/api/messages/bulk/", {"messages": items}, format="json")
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert [m["recipient_phone_number"] for m in body["messages"]] == [OTHER, "+12125550125"]
    [refused] = body["refused"]
    assert (refused["index"], refused["recipient_phone_number"]) == (1, NUMBER) and "opted out" in refused["reason"]
    # Nothing left to queue: 422, the same body.
    answer = api_client.post("/api/messages/bulk/", {"messages": [items[1]]}, format="json")
    assert answer.status_code == 422 and answer.json()["messages"] == []


def test_csv_import_rejects_the_row_and_queues_the_rest(tmp_path):
    opt_out()
    path = tmp_path / "in.csv"
    path.write_text(f"recipient_phone_number,content\n{OTHER},a\n{NUMBER},b\n")
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("import_messages", str(path), stdout=io.StringIO(), stderr=err)
    assert "line 3: recipient_phone_number: The recipient opted out" in err.getvalue()
    assert list(Message.objects.values_list("recipient_phone_number", flat=True)) == [OTHER]


def test_the_admin_form_refuses_it(client):
    client.force_login(make_user(username="root", superuser=True))
    opt_out()
    answer = client.post(
        "/admin/messages_app/message/add/",
        {"recipient_phone_number": NUMBER, "content": "x", "priority": "normal", "attempts-TOTAL_FORMS": "0"},
    )
    assert answer.status_code == 200 and "opted out" in answer.content.decode()
    assert not Message.objects.exists()


def test_queued_messages_end_suppressed_when_the_number_opts_out():
    waiting = make_message(recipient_phone_number=NUMBER)
    other = make_message(recipient_phone_number=OTHER)
    opt_out()
    waiting.refresh_from_db()
    other.refresh_from_db()
    assert (waiting.status, other.status) == (Status.SUPPRESSED, Status.UNSENT)
    assert "opted out" in waiting.status_reason and waiting.next_attempt_at is None


def test_an_import_of_opt_outs_suppresses_their_queued_messages():
    waiting = make_message(recipient_phone_number=NUMBER)
    assert consents_opt_out_many(phone_numbers=[NUMBER, OTHER], method="csv_import", via="command") == 2
    waiting.refresh_from_db()
    assert waiting.status == Status.SUPPRESSED


def test_a_claimed_message_is_suppressed_just_before_its_send_without_asking_the_provider():
    to_them = make_message(recipient_phone_number=NUMBER)
    to_other = make_message(recipient_phone_number=OTHER)
    token = claim(to_them, to_other)
    # Opted out after the claim: the worker finds it when it starts the chunk.
    Consent.objects.create(phone_number=NUMBER, status="opted_out", method="api", changed_by="test")

    report = send_chunk(message_ids=[to_them.pk, to_other.pk], claim_token=token, provider=locmem.LocmemProvider())

    assert report.suppressed == 1
    assert [entry.to for entry in locmem.outbox] == [OTHER]
    to_them.refresh_from_db()
    assert (to_them.status, to_them.claim_token, to_them.attempts) == (Status.SUPPRESSED, None, 0)
    assert "opted out" in to_them.status_reason
    [attempt] = DeliveryAttempt.objects.filter(message=to_them)
    assert attempt.outcome == DeliveryAttempt.Outcome.SUPPRESSED


def test_the_chunk_is_checked_in_one_query():
    numbers = [f"+1212555{n:04d}" for n in range(300, 350)]
    messages = [make_message(recipient_phone_number=n) for n in numbers]
    for number in numbers[::10]:
        Consent.objects.create(phone_number=number, status="opted_out", method="api", changed_by="test")
    with CaptureQueriesContext(connection) as queries:
        found = messages_to_suppress(message_ids=[m.pk for m in messages])
    assert len(queries) == 1
    assert set(found) == {m.pk for m in messages[::10]}


def test_the_stop_confirmation_goes_out_once_though_the_number_is_opted_out():
    make_message(recipient_phone_number=NUMBER, content="queued before the STOP")
    result = inbound_receive(reply=InboundIn(inbound_id="in-1", provider="test", from_number=NUMBER, text="STOP"))
    confirmation = Message.objects.get(pk=result.reply_message_id)
    assert confirmation.status == Status.UNSENT
    token = claim(confirmation)
    send_chunk(message_ids=[confirmation.pk], claim_token=token, provider=locmem.LocmemProvider())
    assert [(entry.to, entry.content) for entry in locmem.outbox] == [(NUMBER, confirmation.content)]
    assert Message.objects.filter(recipient_phone_number=NUMBER, status=Status.SUPPRESSED).count() == 1
    # Anything else to the number is still refused or suppressed.
    assert messages_to_suppress(message_ids=[make_message(recipient_phone_number=NUMBER).pk])


def test_the_api_and_the_admin_show_why(api_client, client):
    message = make_message(recipient_phone_number=NUMBER)
    opt_out()
    assert "opted out" in api_client.get(f"/api/messages/{message.pk}/").json()["status_reason"]
    client.force_login(make_user(username="root", superuser=True))
    assert (
        "opted out after it was queued"
        in client.get(f"/admin/messages_app/message/{message.pk}/change/").content.decode()
    )


def test_a_provider_s_report_that_the_recipient_opted_out_is_recorded_as_its_opt_out():
    from dispatcher.engine.providers import ProviderError

    refused = make_message(recipient_phone_number=NUMBER)
    waiting = make_message(recipient_phone_number=NUMBER)
    locmem.failures.append(
        ProviderError(
            "Twilio answered HTTP 400 (code 21610): unsubscribed",
            permanent=True,
            http_status=400,
            recipient_opted_out=True,
        )
    )
    token = claim(refused)
    send_chunk(message_ids=[refused.pk], claim_token=token, provider=locmem.LocmemProvider())

    consent = Consent.objects.get(phone_number=NUMBER)
    assert (consent.status, consent.method) == (Consent.Status.OPTED_OUT, Consent.Method.PROVIDER_REPORT)
    assert "21610" in consent.note
    refused.refresh_from_db()
    waiting.refresh_from_db()
    assert (refused.status, waiting.status) == (Status.FAILED, Status.SUPPRESSED)
