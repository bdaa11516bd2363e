import datetime as dt

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from messages_app.models import Message
from messages_app.permissions import REQUEUE_MESSAGE
from tests.factories import grant, make_message, make_user

pytestmark = pytest.mark.django_db

Status = Message.Status

LIST_URL = "/api/messages/"
BULK_URL = "/api/messages/bulk/"
SENT_URL = "/api/messages/sent/"

MESSAGE_FIELDS = {
    "id",
    "uuid",
    "recipient_phone_number",
    "content",
    "status",
    "created_at",
    "sent_at",
    "provider_message_id",
    "attempts",
    "last_error",
    "send_after",
    "next_attempt_at",
    "expires_at",
    "priority",
    "segments",
    "delivery_status",
    "delivery_error_code",
    "delivery_status_at",
    "category",
    "status_reason",
    "template_id",
    "template_version",
    "template_language",
    "personalisation",
    "client_reference",
    "callback_url",
}


def detail_url(pk) -> str:
    return f"/api/messages/{pk}/"


def requeue_url(pk) -> str:
    return f"/api/messages/{pk}/requeue/"


def follow_pages(client: APIClient, url: str) -> list[list[dict]]:
    """Every page's results, following `next` links to the end."""
    pages = []
    seen_urls = set()
    while url:
        assert url not in seen_urls, "pagination loops"
        seen_urls.add(url)
        response = client.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == {"next", "previous", "results"}
        pages.append(body["results"])
        url = body["next"]
    return pages


# --- create -------------------------------------------------------------------------


def test_create_returns_201_with_the_message_and_stores_it_normalised(api_client):
    response = api_client.post(
        LIST_URL, {"recipient_phone_number": "+90 555 111 22 33", "content": "Hello!"}, format="json"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == MESSAGE_FIELDS
    assert body["recipient_phone_number"] == "+905551112233"
    assert body["content"] == "Hello!"
    assert body["status"] == "unsent"
    assert body["sent_at"] is None
    assert body["provider_message_id"] == ""
    assert body["attempts"] == 0
    assert body["last_error"] == ""

    stored = Message.objects.get()
    assert stored.pk == body["id"]
    assert str(stored.uuid) == body["uuid"]
    assert stored.recipient_phone_number == "+905551112233"
    assert stored.content == "Hello!"
    assert stored.status == Status.UNSENT


def test_create_keeps_content_exactly_as_given(api_client):
    content = "  spaced\nlines \N{GRINNING FACE} çğış  "
    response = api_client.post(LIST_URL, {"recipient_phone_number": "+905551112233", "content": content}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["content"] == content
    assert Message.objects.get().content == content


def test_create_refuses_read_only_fields_in_the_body_naming_each(api_client):
    response = api_client.post(
        LIST_URL,
        {
            "recipient_phone_number": "+905551112233",
            "content": "hi",
            "status": "sent",
            "attempts": 9,
            "provider_message_id": "forged",
            "id": 424242,
        },
        format="json",
    )
    assert response.status_code == 400, response.content
    assert response.json() == {name: ["Unknown field."] for name in ("attempts", "id", "provider_message_id", "status")}
    assert not Message.objects.exists()


def test_create_accepts_form_encoded_bodies(api_client):
    response = api_client.post(LIST_URL, {"recipient_phone_number": "+90 555 111 22 33", "content": "form"})
    assert response.status_code == 201, response.content
    assert Message.objects.get().recipient_phone_number == "+905551112233"


def test_create_accepts_content_at_the_limit_counted_in_characters(api_client, settings):
    settings.MESSAGE_MAX_LENGTH = 1000
    content = "\N{GRINNING FACE}" * 1000
    response = api_client.post(LIST_URL, {"recipient_phone_number": "+905551112233", "content": content}, format="json")
    assert response.status_code == 201, response.content
    assert Message.objects.get().content == content


PHONE = "+905551112233"
OMIT = object()


def body_of(phone=PHONE, content="hi") -> dict:
    body = {"recipient_phone_number": phone, "content": content}
    return {key: value for key, value in body.items() if value is not OMIT}


PHONE_ERROR = {"recipient_phone_number"}
CONTENT_ERROR = {"content"}


@pytest.mark.parametrize(
    ("body", "error_fields"),
    [
        pytest.param({}, {"recipient_phone_number", "content"}, id="empty-object"),
        pytest.param(body_of(phone=OMIT), PHONE_ERROR, id="missing-phone"),
        pytest.param(body_of(content=OMIT), CONTENT_ERROR, id="missing-content"),
        pytest.param(body_of(content=123), CONTENT_ERROR, id="content-int"),
        pytest.param(body_of(content=1.5), CONTENT_ERROR, id="content-float"),
        pytest.param(body_of(content=True), CONTENT_ERROR, id="content-bool"),
        pytest.param(body_of(content=["hi"]), CONTENT_ERROR, id="content-list"),
        pytest.param(body_of(content={"a": 1}), CONTENT_ERROR, id="content-object"),
        pytest.param(body_of(content=None), CONTENT_ERROR, id="content-null"),
        pytest.param(body_of(content=""), CONTENT_ERROR, id="content-empty"),
        pytest.param(body_of(content="  \n\t "), CONTENT_ERROR, id="content-blank"),
        pytest.param(body_of(content="a\x00b"), CONTENT_ERROR, id="content-nul"),
        pytest.param(body_of(phone=905551112233), PHONE_ERROR, id="phone-int"),
        pytest.param(body_of(phone=["+905551112233"]), PHONE_ERROR, id="phone-list"),
        pytest.param(body_of(phone=None), PHONE_ERROR, id="phone-null"),
        pytest.param(body_of(phone=""), PHONE_ERROR, id="phone-empty"),
        pytest.param(body_of(phone="+90 555 ABC"), PHONE_ERROR, id="phone-letters"),
        pytest.param(body_of(phone="5551112233"), PHONE_ERROR, id="phone-no-country-code"),
        pytest.param(body_of(phone="+90 123 456 78 90"), PHONE_ERROR, id="phone-invalid-for-country"),
        pytest.param(body_of(phone="+9" + "0" * 80), PHONE_ERROR, id="phone-too-long"),
        pytest.param(body_of(phone="x", content=""), {"recipient_phone_number", "content"}, id="both-bad"),
    ],
)
def test_create_with_bad_input_is_400_with_field_errors_and_writes_nothing(api_client, body, error_fields):
    response = api_client.post(LIST_URL, body, format="json")

    assert response.status_code == 400, response.content
    errors = response.json()
    assert set(errors) == error_fields
    for field in error_fields:
        assert isinstance(errors[field], list)
        assert errors[field]
        assert all(isinstance(message, str) and message for message in errors[field])
    assert not Message.objects.exists()


def test_create_with_over_long_content_is_400(api_client, settings):
    settings.MESSAGE_MAX_LENGTH = 10
    response = api_client.post(
        LIST_URL, {"recipient_phone_number": "+905551112233", "content": "\N{GRINNING FACE}" * 11}, format="json"
    )
    assert response.status_code == 400
    assert "limit is 10" in response.json()["content"][0]
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "raw_body",
    [
        b'{"recipient_phone_number": "+905551112233", "content": "hi"',
        b"not json at all",
        b'{"recipient_phone_number": "+905551112233", "content": "hi",}',
        b"\xff\xfe\x00garbage",
    ],
)
def test_create_with_malformed_json_is_400_not_500(api_client, raw_body):
    response = api_client.post(LIST_URL, raw_body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert "detail" in response.json()
    assert not Message.objects.exists()


@pytest.mark.parametrize("raw_body", [b"[]", b'["+905551112233", "hi"]', b'"hi"', b"42", b"null"])
def test_create_with_a_json_body_that_is_not_an_object_is_400(api_client, raw_body):
    response = api_client.post(LIST_URL, raw_body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert not Message.objects.exists()


def test_create_with_an_unsupported_media_type_is_415(api_client):
    response = api_client.post(LIST_URL, b"recipient=+905551112233", content_type="text/plain")
    assert response.status_code == 415
    assert not Message.objects.exists()


# --- bulk -----------------------------------------------------------------------------


def test_bulk_create_returns_201_with_every_message(api_client):
    items = [
        {"recipient_phone_number": "+90 555 000 00 01", "content": "one"},
        {"recipient_phone_number": "+90 555 000 00 02", "content": "two"},
        {"recipient_phone_number": "+44 20 7946 0000", "content": "three"},
    ]
    response = api_client.post(BULK_URL, {"messages": items}, format="json")

    assert response.status_code == 201, response.content
    returned = response.json()["messages"]
    assert [m["content"] for m in returned] == ["one", "two", "three"]
    assert [m["recipient_phone_number"] for m in returned] == ["+905550000001", "+905550000002", "+442079460000"]
    assert all(set(m) == MESSAGE_FIELDS for m in returned)
    assert all(m["status"] == "unsent" for m in returned)
    stored = dict(Message.objects.values_list("id", "content"))
    assert stored == {m["id"]: m["content"] for m in returned}


def test_bulk_create_with_one_bad_item_is_400_with_errors_at_its_index_and_writes_nothing(api_client):
    items = [{"recipient_phone_number": f"+90555000000{i}", "content": f"m{i}"} for i in range(5)]
    items[3] = {"recipient_phone_number": "+90 123", "content": "bad phone"}

    response = api_client.post(BULK_URL, {"messages": items}, format="json")

    assert response.status_code == 400, response.content
    # DRF's dictionary format for list errors: only the bad items, keyed by index.
    errors = response.json()["messages"]
    assert set(errors) == {"3"}
    assert set(errors["3"]) == {"recipient_phone_number"}
    assert not Message.objects.exists()


def test_bulk_create_reports_every_bad_item(api_client):
    items = [
        {"recipient_phone_number": "+905550000001", "content": ""},
        {"recipient_phone_number": "+905550000002", "content": "fine"},
        {"content": 5},
    ]
    response = api_client.post(BULK_URL, {"messages": items}, format="json")

    assert response.status_code == 400, response.content
    errors = response.json()["messages"]
    assert set(errors) == {"0", "2"}
    assert set(errors["0"]) == {"content"}
    assert set(errors["2"]) == {"recipient_phone_number", "content"}
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"messages": []}, id="empty-list"),
        pytest.param({}, id="missing-key"),
        pytest.param({"messages": None}, id="null"),
        pytest.param({"messages": {"recipient_phone_number": "+905551112233", "content": "hi"}}, id="object"),
        pytest.param({"messages": ["+905551112233"]}, id="list-of-strings"),
    ],
)
def test_bulk_create_with_a_bad_envelope_is_400(api_client, body):
    response = api_client.post(BULK_URL, body, format="json")
    assert response.status_code == 400, response.content
    assert "messages" in response.json()
    assert not Message.objects.exists()


def test_bulk_create_with_a_bare_list_body_is_400(api_client):
    response = api_client.post(BULK_URL, [{"recipient_phone_number": "+905551112233", "content": "hi"}], format="json")
    assert response.status_code == 400, response.content
    assert not Message.objects.exists()


def test_bulk_create_with_malformed_json_is_400(api_client):
    response = api_client.post(BULK_URL, b'{"messages": [', content_type="application/json")
    assert response.status_code == 400
    assert not Message.objects.exists()


def test_bulk_create_up_to_the_limit_is_accepted_and_over_it_is_400(api_client, settings):
    settings.MESSAGE_BULK_MAX_ITEMS = 3
    items = [{"recipient_phone_number": f"+90555000000{i}", "content": f"m{i}"} for i in range(4)]

    over = api_client.post(BULK_URL, {"messages": items}, format="json")
    assert over.status_code == 400, over.content
    assert "At most 3" in str(over.json()["messages"])
    assert not Message.objects.exists()

    at_limit = api_client.post(BULK_URL, {"messages": items[:3]}, format="json")
    assert at_limit.status_code == 201, at_limit.content
    assert Message.objects.count() == 3


# --- list -----------------------------------------------------------------------------


def test_list_returns_messages_newest_first_in_a_cursor_page(api_client):
    messages = [make_message() for _ in range(3)]

    response = api_client.get(LIST_URL)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"next", "previous", "results"}
    assert body["next"] is None
    assert body["previous"] is None
    assert [m["id"] for m in body["results"]] == [m.pk for m in reversed(messages)]
    assert all(set(m) == MESSAGE_FIELDS for m in body["results"])


def test_list_of_nothing_is_an_empty_page(api_client):
    response = api_client.get(LIST_URL)
    assert response.status_code == 200
    assert response.json() == {"next": None, "previous": None, "results": []}


@pytest.mark.parametrize("status", list(Status))
def test_list_filters_by_status(api_client, status):
    by_status = {s: [make_message(status=s).pk for _ in range(2)] for s in Status}

    response = api_client.get(LIST_URL, {"status": status.value})

    assert response.status_code == 200
    results = response.json()["results"]
    assert [m["id"] for m in results] == sorted(by_status[status], reverse=True)
    assert {m["status"] for m in results} == {status.value}


@pytest.mark.parametrize("status", ["SENT", "bogus", "sent,failed", "0"])
def test_list_with_an_invalid_status_is_400(api_client, status):
    make_message(status=Status.SENT)
    response = api_client.get(LIST_URL, {"status": status})
    assert response.status_code == 400, response.content
    assert "status" in response.json()


@pytest.mark.parametrize("query", ["+905551112233", "+90 555 111 22 33", "+90 (555) 111-22-33", " +90-555-111-2233 "])
def test_list_filters_by_recipient_in_any_format(api_client, query):
    wanted = [make_message(recipient_phone_number="+905551112233").pk for _ in range(2)]
    make_message(recipient_phone_number="+905551112234")
    make_message(recipient_phone_number="+442079460000")

    response = api_client.get(LIST_URL, {"recipient_phone_number": query})

    assert response.status_code == 200
    assert [m["id"] for m in response.json()["results"]] == sorted(wanted, reverse=True)


@pytest.mark.parametrize("query", ["not-a-phone", "5551112233", "+90 123 456 78 90"])
def test_list_by_an_invalid_recipient_matches_nothing(api_client, query):
    make_message(recipient_phone_number="+905551112233")
    response = api_client.get(LIST_URL, {"recipient_phone_number": query})
    assert response.status_code == 200
    assert response.json()["results"] == []


def test_list_combines_filters(api_client):
    hit = make_message(recipient_phone_number="+905551112233", status=Status.FAILED)
    make_message(recipient_phone_number="+905551112233", status=Status.SENT)
    make_message(recipient_phone_number="+905551112234", status=Status.FAILED)

    response = api_client.get(LIST_URL, {"recipient_phone_number": "+90 555 111 22 33", "status": "failed"})

    assert response.status_code == 200
    assert [m["id"] for m in response.json()["results"]] == [hit.pk]


def test_list_cursor_pagination_visits_every_message_once(api_client):
    ids = [make_message().pk for _ in range(7)]

    pages = follow_pages(api_client, f"{LIST_URL}?page_size=2")

    assert [len(page) for page in pages] == [2, 2, 2, 1]
    assert [m["id"] for page in pages for m in page] == sorted(ids, reverse=True)


def test_list_cursor_pagination_keeps_the_filter(api_client):
    failed = [make_message(status=Status.FAILED).pk for _ in range(5)]
    for _ in range(5):
        make_message(status=Status.SENT)

    pages = follow_pages(api_client, f"{LIST_URL}?page_size=2&status=failed")

    assert [m["id"] for page in pages for m in page] == sorted(failed, reverse=True)


def test_list_cursor_pagination_does_not_skip_or_repeat_when_messages_arrive(api_client):
    ids = [make_message().pk for _ in range(4)]

    first = api_client.get(f"{LIST_URL}?page_size=2").json()
    newer = make_message()  # arrives between pages; belongs before the first page
    rest = follow_pages(api_client, first["next"])

    seen = [m["id"] for m in first["results"]] + [m["id"] for page in rest for m in page]
    assert seen == sorted(ids, reverse=True)
    assert newer.pk not in seen


def test_list_previous_link_goes_back(api_client):
    ids = sorted((make_message().pk for _ in range(5)), reverse=True)
    first = api_client.get(f"{LIST_URL}?page_size=2").json()
    second = api_client.get(first["next"]).json()
    assert [m["id"] for m in second["results"]] == ids[2:4]

    back = api_client.get(second["previous"]).json()

    assert [m["id"] for m in back["results"]] == ids[:2]


GARBAGE_CURSORS = [
    pytest.param("garbage", id="not-base64"),
    pytest.param("\u00e9t\u00e9", id="not-ascii"),
    pytest.param("bz1hYmM=", id="offset-not-a-number"),  # o=abc
    pytest.param("bz0tMQ==", id="negative-offset"),  # o=-1
    pytest.param("cD1hYmM=", id="position-not-a-number"),  # p=abc
    pytest.param("cD0yMDI1LTEzLTQ1", id="position-not-a-date"),  # p=2025-13-45
]


@pytest.mark.parametrize("cursor", GARBAGE_CURSORS)
def test_list_with_a_garbage_cursor_is_a_client_error(api_client, cursor):
    make_message()
    response = api_client.get(LIST_URL, {"cursor": cursor})
    assert 400 <= response.status_code < 500, response.content


@pytest.mark.parametrize("page_size", ["0", "-1", "abc", "", "1.5", "501", "100000", "99999999999999999999"])
def test_list_with_a_bad_page_size_is_400_naming_the_range(api_client, page_size):
    make_message()
    response = api_client.get(LIST_URL, {"page_size": page_size})
    assert response.status_code == 400, response.content
    assert response.json() == {"page_size": ["Must be a whole number from 1 to 500."]}


@pytest.mark.parametrize("page_size", ["1", "500"])
def test_list_page_size_up_to_the_maximum_is_accepted(api_client, page_size):
    for _ in range(3):
        make_message()
    response = api_client.get(LIST_URL, {"page_size": page_size})
    assert response.status_code == 200, response.content
    assert len(response.json()["results"]) == min(3, int(page_size))


# --- sent -----------------------------------------------------------------------------------


def test_sent_lists_only_sent_messages_most_recently_sent_first(api_client):
    base = timezone.now() - dt.timedelta(hours=1)
    # Created in one order, sent in another: the list follows sending time.
    older = make_message(status=Status.SENT, sent_at=base + dt.timedelta(minutes=1))
    newest = make_message(status=Status.SENT, sent_at=base + dt.timedelta(minutes=30))
    middle = make_message(status=Status.SENT, sent_at=base + dt.timedelta(minutes=10))
    for status in (Status.UNSENT, Status.PROCESSING, Status.FAILED):
        make_message(status=status)

    response = api_client.get(SENT_URL)

    assert response.status_code == 200
    results = response.json()["results"]
    assert [m["id"] for m in results] == [newest.pk, middle.pk, older.pk]
    assert all(m["status"] == "sent" for m in results)
    assert all(set(m) == MESSAGE_FIELDS for m in results)
    assert results[0]["provider_message_id"] == newest.provider_message_id


def test_sent_is_paginated_in_sending_order(api_client):
    base = timezone.now() - dt.timedelta(hours=1)
    offsets = [5, 1, 9, 3, 7, 2, 8]
    messages = [make_message(status=Status.SENT, sent_at=base + dt.timedelta(minutes=o)) for o in offsets]
    make_message(status=Status.FAILED)

    pages = follow_pages(api_client, f"{SENT_URL}?page_size=2")

    assert [len(page) for page in pages] == [2, 2, 2, 1]
    expected = [m.pk for m in sorted(messages, key=lambda m: m.sent_at, reverse=True)]
    assert [m["id"] for page in pages for m in page] == expected


def test_sent_pagination_with_equal_sent_times_repeats_and_skips_nothing(api_client):
    same = timezone.now() - dt.timedelta(minutes=5)
    ids = [make_message(status=Status.SENT, sent_at=same).pk for _ in range(5)]

    pages = follow_pages(api_client, f"{SENT_URL}?page_size=2")

    seen = [m["id"] for page in pages for m in page]
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))
    assert seen == sorted(ids, reverse=True)  # ties broken by newest id first


def test_sent_ignores_message_filters(api_client):
    sent = make_message(status=Status.SENT)
    response = api_client.get(SENT_URL, {"status": "failed"})
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["results"]] == [sent.pk]


@pytest.mark.parametrize("cursor", GARBAGE_CURSORS)
def test_sent_with_a_garbage_cursor_is_a_client_error(api_client, cursor):
    make_message(status=Status.SENT)
    response = api_client.get(SENT_URL, {"cursor": cursor})
    assert 400 <= response.status_code < 500


# --- detail ---------------------------------------------------------------------------------------


def test_detail_returns_the_message(api_client):
    message = make_message(status=Status.SENT, content="details")

    response = api_client.get(detail_url(message.pk))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == MESSAGE_FIELDS
    assert body["id"] == message.pk
    assert body["uuid"] == str(message.uuid)
    assert body["content"] == "details"
    assert body["status"] == "sent"
    assert body["sent_at"] is not None
    assert body["provider_message_id"] == message.provider_message_id


@pytest.mark.parametrize("pk", ["987654321", "abc", "0", "-1", "99999999999999999999999"])
def test_detail_of_an_unknown_message_is_404(api_client, pk):
    make_message()
    assert api_client.get(detail_url(pk)).status_code == 404


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_messages_cannot_be_edited_or_deleted(api_client, method):
    message = make_message()
    response = getattr(api_client, method)(detail_url(message.pk), {"content": "changed"}, format="json")
    assert response.status_code == 405
    assert Message.objects.get(pk=message.pk).content == "hello"


# --- requeue ------------------------------------------------------------------------------------------


def test_requeue_of_a_failed_message_is_200_and_unsent(operator_client):
    message = make_message(status=Status.FAILED, attempts=2, last_error="boom")

    response = operator_client.post(requeue_url(message.pk))

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == MESSAGE_FIELDS
    assert body["id"] == message.pk
    assert body["status"] == "unsent"
    stored = Message.objects.get(pk=message.pk)
    assert stored.status == Status.UNSENT
    assert stored.claimed_at is None


@pytest.mark.parametrize("status", [Status.UNSENT, Status.SENT, Status.PROCESSING])
def test_requeue_of_a_message_that_is_not_failed_is_409_and_changes_nothing(operator_client, status):
    message = make_message(status=status)
    before = Message.objects.filter(pk=message.pk).values().get()

    response = operator_client.post(requeue_url(message.pk))

    assert response.status_code == 409, response.content
    assert status.value in response.json()["detail"]
    assert Message.objects.filter(pk=message.pk).values().get() == before


def test_requeue_twice_is_200_then_409(operator_client):
    message = make_message(status=Status.FAILED)
    assert operator_client.post(requeue_url(message.pk)).status_code == 200
    assert operator_client.post(requeue_url(message.pk)).status_code == 409
    assert Message.objects.get(pk=message.pk).status == Status.UNSENT


def test_requeue_of_an_unknown_message_is_404(operator_client):
    assert operator_client.post(requeue_url(987654321)).status_code == 404


def test_requeue_needs_post(operator_client):
    message = make_message(status=Status.FAILED)
    assert operator_client.get(requeue_url(message.pk)).status_code == 405
    assert Message.objects.get(pk=message.pk).status == Status.FAILED


# --- authentication ---------------------------------------------------------------------------------


def _every_endpoint(pk: int) -> list[tuple[str, str, dict | None]]:
    return [
        ("get", LIST_URL, None),
        ("post", LIST_URL, {"recipient_phone_number": "+905551112233", "content": "hi"}),
        ("post", BULK_URL, {"messages": [{"recipient_phone_number": "+905551112233", "content": "hi"}]}),
        ("get", SENT_URL, None),
        ("get", detail_url(pk), None),
        ("post", requeue_url(pk), None),
    ]


def test_every_endpoint_refuses_anonymous_requests_with_401(anon_client):
    message = make_message(status=Status.FAILED)

    for method, url, body in _every_endpoint(message.pk):
        response = getattr(anon_client, method)(url, body, format="json")
        assert response.status_code == 401, (method, url, response.status_code)
        assert response.has_header("WWW-Authenticate"), (method, url)
        assert response["WWW-Authenticate"].startswith("Token")

    assert Message.objects.count() == 1
    assert Message.objects.get(pk=message.pk).status == Status.FAILED


def test_every_endpoint_refuses_a_wrong_token_with_401():
    message = make_message(status=Status.FAILED)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    for method, url, body in _every_endpoint(message.pk):
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 401, (method, url, response.status_code)

    assert Message.objects.count() == 1


def test_an_inactive_users_token_is_refused(client_for):
    user = make_user(username="gone")
    client = client_for(user)
    user.is_active = False
    user.save()
    assert client.get(LIST_URL).status_code == 401


def test_session_authentication_works_on_every_endpoint(user):
    message = make_message(status=Status.FAILED)
    client = APIClient()
    client.force_login(grant(user, REQUEUE_MESSAGE))

    expected = {LIST_URL: 200, SENT_URL: 200, detail_url(message.pk): 200, requeue_url(message.pk): 200}
    for method, url, body in _every_endpoint(message.pk):
        response = getattr(client, method)(url, body, format="json")
        wanted = 201 if method == "post" and url in (LIST_URL, BULK_URL) else expected[url]
        assert response.status_code == wanted, (method, url, response.content)

    assert Message.objects.count() == 3


def test_session_login_with_a_password_works(user):
    client = APIClient()
    assert client.login(username=user.username, password="pw-for-tests-only")
    response = client.get(LIST_URL)
    assert response.status_code == 200


def test_session_authenticated_writes_need_the_csrf_token(user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.post(LIST_URL, {"recipient_phone_number": "+905551112233", "content": "hi"}, format="json")

    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert not Message.objects.exists()


def test_token_authenticated_writes_need_no_csrf_token(user, client_for):
    client = client_for(user)
    client.handler.enforce_csrf_checks = True
    response = client.post(LIST_URL, {"recipient_phone_number": "+905551112233", "content": "hi"}, format="json")
    assert response.status_code == 201


# --- send_after and the attempt log ----------------------------------------------------


def test_create_with_send_after_holds_the_message_until_then(api_client):
    when = timezone.now() + dt.timedelta(hours=2)
    response = api_client.post(
        LIST_URL,
        {"recipient_phone_number": "+905551112233", "content": "later", "send_after": when.isoformat()},
        format="json",
    )
    assert response.status_code == 201, response.content
    stored = Message.objects.get()
    assert stored.send_after == when and stored.next_attempt_at == when
    assert response.json()["send_after"] is not None


def test_create_with_a_malformed_send_after_is_400_and_stores_nothing(api_client):
    response = api_client.post(
        LIST_URL,
        {"recipient_phone_number": "+905551112233", "content": "x", "send_after": "tomorrow-ish"},
        format="json",
    )
    assert response.status_code == 400
    assert "send_after" in response.json()
    assert not Message.objects.exists()


def test_attempts_lists_the_delivery_attempts_oldest_first(api_client):
    from messages_app.models import DeliveryAttempt

    message = make_message(status=Status.SENT)
    other = make_message()
    now = timezone.now()
    DeliveryAttempt.objects.create(message=message, number=1, started_at=now, outcome="retry", http_status=503)
    DeliveryAttempt.objects.create(
        message=message, number=2, started_at=now, outcome="sent", http_status=202, provider_message_id="abc"
    )
    DeliveryAttempt.objects.create(message=other, number=1, started_at=now, outcome="retry")

    response = api_client.get(f"{detail_url(message.pk)}attempts/")

    assert response.status_code == 200
    body = response.json()
    assert [(a["number"], a["outcome"], a["http_status"]) for a in body] == [(1, "retry", 503), (2, "sent", 202)]
    assert set(body[0]) == {
        "number",
        "provider",
        "started_at",
        "duration_ms",
        "http_status",
        "outcome",
        "error",
        "provider_message_id",
    }
    assert api_client.get(f"{detail_url(999999)}attempts/").status_code == 404
    assert APIClient().get(f"{detail_url(message.pk)}attempts/").status_code == 401
