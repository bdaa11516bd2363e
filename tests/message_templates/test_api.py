"""The templates' API, and messages sent from a template through the messages' API."""

from __future__ import annotations

import pytest
from django.utils import timezone

from audit.models import ControlAction
from message_templates import services
from message_templates.models import Template
from messages_app.models import Message
from messages_app.services import messages_prune
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def create(client, **body):
    body.setdefault("name", "appointment")
    body.setdefault("body", "Hi ((name)), see you at ((time)).((vip?? Free parking.))")
    response = client.post("/api/templates/", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_create_list_get_and_audit(editor_client):
    created = create(editor_client, category="marketing")
    assert created["current_version"] == 1
    assert created["current"]["bodies"] == {"en": "Hi ((name)), see you at ((time)).((vip?? Free parking.))"}
    assert created["current"]["placeholders"] == ["name", "time", "vip"]
    assert created["current"]["category"] == "marketing"
    listed = editor_client.get("/api/templates/").json()
    assert [t["name"] for t in listed["results"]] == ["appointment"]
    assert editor_client.get(f"/api/templates/{created['id']}/").json()["current"]["number"] == 1
    audit = ControlAction.objects.get(action=ControlAction.Action.TEMPLATE)
    assert audit.actor_label == "tess" and audit.via == "api"
    assert audit.detail["change"] == "create" and audit.detail["version"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x"}, "body"),
        ({"name": "x", "body": "   "}, "bodies"),
        ({"name": "x", "body": "a", "bodies": {"en": "b"}}, "body"),
        ({"name": "x", "bodies": {"english": "b"}}, "bodies"),
        ({"name": "x", "bodies": {"tr": "b"}}, "default_language"),
        ({"name": "123", "body": "a"}, "name"),
        ({"name": "x", "body": "a", "category": "spam"}, "category"),
        ({"name": "x", "body": "a", "colour": "red"}, "colour"),
    ],
)
def test_bad_templates_are_400_naming_the_field(editor_client, body, field):
    response = editor_client.post("/api/templates/", body, format="json")
    assert response.status_code == 400 and field in response.json(), response.json()
    assert not Template.objects.exists()


def test_a_taken_name_is_400(editor_client):
    create(editor_client)
    response = editor_client.post("/api/templates/", {"name": "appointment", "body": "x"}, format="json")
    assert response.status_code == 400 and "name" in response.json()


def test_edit_makes_versions_and_restore_copies_an_old_one(editor_client):
    template = create(editor_client)
    tid = template["id"]
    edited = editor_client.put(f"/api/templates/{tid}/", {"body": "Hello ((name))"}, format="json").json()
    assert edited["current_version"] == 2 and edited["current"]["bodies"]["en"] == "Hello ((name))"
    variant = editor_client.put(f"/api/templates/{tid}/variants/tr/", {"body": "Merhaba ((name))"}, format="json")
    assert variant.status_code == 200 and variant.json()["number"] == 3
    assert variant.json()["bodies"] == {"en": "Hello ((name))", "tr": "Merhaba ((name))"}
    restored = editor_client.post(f"/api/templates/{tid}/restore/", {"version": 1}, format="json")
    assert restored.status_code == 201
    assert restored.json()["number"] == 4 and restored.json()["restored_from"] == 1
    assert restored.json()["bodies"] == template["current"]["bodies"]
    versions = editor_client.get(f"/api/templates/{tid}/versions/").json()
    assert [v["number"] for v in versions] == [4, 3, 2, 1]
    assert versions[3]["bodies"] == template["current"]["bodies"]  # version 1 as it was
    missing = editor_client.post(f"/api/templates/{tid}/restore/", {"version": 9}, format="json")
    assert missing.status_code == 400 and "version" in missing.json()
    removed = editor_client.delete(f"/api/templates/{tid}/variants/en/")
    assert removed.status_code == 400  # the default language stays
    assert ControlAction.objects.filter(action=ControlAction.Action.TEMPLATE).count() == 4


def test_preview_gives_text_encoding_segments_and_ucs2_characters(editor_client):
    tid = create(editor_client)["id"]
    response = editor_client.post(
        f"/api/templates/{tid}/preview/",
        {"personalisation": {"Name": "Şule", "time": "10:00", "vip": "yes"}},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json() == {
        "text": "Hi Şule, see you at 10:00. Free parking.",
        "length": 40,
        "encoding": "UCS-2",
        "segments": 1,
        "ucs2_characters": [
            {"character": "Ş", "position": 4, "code_point": "U+015E", "name": "LATIN CAPITAL LETTER S WITH CEDILLA"}
        ],
        "version": 1,
        "language": "en",
    }
    unsaved = editor_client.post(
        "/api/templates/preview/", {"body": "((a)) €", "personalisation": {"a": "x"}}, format="json"
    )
    assert unsaved.json()["text"] == "x €" and unsaved.json()["encoding"] == "GSM-7"


def test_preview_names_every_missing_placeholder_and_refuses_too_long(editor_client, settings):
    tid = create(editor_client)["id"]
    response = editor_client.post(f"/api/templates/{tid}/preview/", {"personalisation": {}}, format="json")
    assert response.status_code == 400
    assert response.json() == {"personalisation": ["Missing personalisation: name, time, vip."]}
    settings.MESSAGE_MAX_LENGTH = 50
    long = editor_client.post(
        f"/api/templates/{tid}/preview/",
        {"personalisation": {"name": "x" * 40, "time": "1", "vip": "no"}},
        format="json",
    )
    assert long.status_code == 400 and "limit is 50" in long.json()["personalisation"][0]


def test_permissions_like_messages(db, client_for, user, editor_client):
    tid = create(editor_client)["id"]
    client = client_for(user)  # may queue messages, may not read or write templates
    assert client.get("/api/templates/").status_code == 403
    assert client.post("/api/templates/", {"name": "y", "body": "x"}, format="json").status_code == 403
    assert client.post(f"/api/templates/{tid}/preview/", {}, format="json").status_code == 403
    assert client.post(f"/api/templates/{tid}/restore/", {"version": 1}, format="json").status_code == 403
    # ...but may send from one: queueing is add_message.
    sent = client.post(
        "/api/messages/",
        {
            "recipient_phone_number": "+905551112233",
            "template": "appointment",
            "personalisation": {"name": "A", "time": "9", "vip": False},
        },
        format="json",
    )
    assert sent.status_code == 201, sent.json()
    viewer = client_for(make_user(username="val", perms=["message_templates.view_template"]))
    assert viewer.get("/api/templates/").status_code == 200
    assert viewer.put(f"/api/templates/{tid}/", {"body": "x"}, format="json").status_code == 403
    assert viewer.put(f"/api/templates/{tid}/variants/tr/", {"body": "x"}, format="json").status_code == 403


def test_send_from_a_template_records_what_it_was_made_from(editor_client):
    template = create(editor_client, category="marketing")
    response = editor_client.post(
        "/api/messages/",
        {
            "recipient_phone_number": "+905551112233",
            "template": template["id"],
            "language": "en-GB",
            "personalisation": {"NAME": "Ada", "time": "10:00", "vip": "no"},
            "priority": "high",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    message = Message.objects.get(pk=response.json()["id"])
    assert message.content == "Hi Ada, see you at 10:00."
    assert (message.template_id, message.template_version, message.template_language) == (template["id"], 1, "en")
    assert message.personalisation == {"NAME": "Ada", "time": "10:00", "vip": "no"}
    assert message.category == "marketing"  # the template's, none given
    assert message.priority == "high" and message.segments == 1


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"template": "nope"}, {"template": ["No template 'nope'."]}),
        ({"template": "appointment", "version": 7}, {"version": ["Template 'appointment' has no version 7."]}),
        (
            {"template": "appointment", "personalisation": {"time": "1"}},
            {"personalisation": ["Missing personalisation: name, vip."]},
        ),
        (
            {"template": "appointment", "content": "x", "personalisation": {}},
            {"content": ["Give content or a template, not both."]},
        ),
        ({"content": "x", "personalisation": {"a": 1}}, {"personalisation": ["Only with a template."]}),
        ({"template": ["appointment"]}, {"template": ["A template's name (text) or id (a number)."]}),
        (
            {"template": "appointment", "language": "../x"},
            {"language": ["'../x' is not a language tag such as en, tr or pt-br."]},
        ),
        ({}, {"content": ["This field is required."]}),
    ],
)
def test_bad_template_requests_are_400(editor_client, body, errors):
    create(editor_client)
    response = editor_client.post("/api/messages/", {"recipient_phone_number": "+905551112233", **body}, format="json")
    assert response.status_code == 400
    assert response.json() == errors
    assert not Message.objects.exists()


def test_a_message_keeps_its_version_after_edits_and_the_version_asked_for_is_used(editor_client):
    template = create(editor_client, body="v1 ((name))")
    first = editor_client.post(
        "/api/messages/",
        {"recipient_phone_number": "+905551112233", "template": "appointment", "personalisation": {"name": "A"}},
        format="json",
    ).json()
    services.template_edit(template_id=template["id"], bodies={"en": "v2 ((name))"})
    services.template_variant_set(template_id=template["id"], language="tr", body="tr ((name))")
    later = editor_client.post(
        "/api/messages/",
        {
            "recipient_phone_number": "+905551112234",
            "template": "appointment",
            "language": "tr",
            "personalisation": {"name": "B"},
        },
        format="json",
    ).json()
    pinned = editor_client.post(
        "/api/messages/",
        {
            "recipient_phone_number": "+905551112235",
            "template": "appointment",
            "version": 1,
            "personalisation": {"name": "C"},
        },
        format="json",
    ).json()
    first_message = Message.objects.get(pk=first["id"])
    assert (first_message.content, first_message.template_version) == ("v1 A", 1)
    later_message = Message.objects.get(pk=later["id"])
    assert (later_message.content, later_message.template_version, later_message.template_language) == ("tr B", 3, "tr")
    assert Message.objects.get(pk=pinned["id"]).content == "v1 C"


def test_bulk_from_a_template_with_dry_run_and_idempotency(editor_client):
    create(editor_client, body="Hi ((name)) ş")
    items = [
        {"recipient_phone_number": f"+90555111{i:04d}", "template": "appointment", "personalisation": {"name": f"N{i}"}}
        for i in range(50)
    ] + [{"recipient_phone_number": "+905559990000", "content": "plain"}]
    dry = editor_client.post("/api/messages/bulk/?dry_run=true", {"messages": items}, format="json")
    assert dry.status_code == 200 and dry.json() == {"messages": 51, "segments": 51, "refused": []}
    assert not Message.objects.exists()
    headers = {"HTTP_IDEMPOTENCY_KEY": "bulk-1"}
    done = editor_client.post("/api/messages/bulk/", {"messages": items}, format="json", **headers)
    assert done.status_code == 201
    again = editor_client.post("/api/messages/bulk/", {"messages": items}, format="json", **headers)
    assert again.status_code == 201 and again.json() == done.json()
    assert Message.objects.count() == 51
    assert Message.objects.get(recipient_phone_number="+905551110007").content == "Hi N7 ş"
    bad = editor_client.post(
        "/api/messages/bulk/",
        {"messages": [items[0], {**items[1], "personalisation": {}}]},
        format="json",
    )
    assert bad.status_code == 400
    assert bad.json() == {"messages": {"1": {"personalisation": ["Missing personalisation: name."]}}}


def test_bulk_reads_the_template_once(editor_client, django_assert_max_num_queries):
    create(editor_client, body="Hi ((name))")
    items = [
        {"recipient_phone_number": f"+90555111{i:04d}", "template": "appointment", "personalisation": {"name": "x"}}
        for i in range(200)
    ]
    # Auth, the template and its version, the opt-out question, the insert...: not one per item.
    with django_assert_max_num_queries(20):
        response = editor_client.post("/api/messages/bulk/", {"messages": items}, format="json")
    assert response.status_code == 201


def test_messages_from_templates_are_pruned_with_their_data(editor_client):
    create(editor_client, body="Hi ((name))")
    editor_client.post(
        "/api/messages/",
        {"recipient_phone_number": "+905551112233", "template": "appointment", "personalisation": {"name": "A"}},
        format="json",
    )
    Message.objects.update(status=Message.Status.SENT)
    assert messages_prune(created_before=timezone.now()) == 1
    assert not Message.objects.exists()


@pytest.mark.parametrize("query", ["dry_run=yes", "dry_run=true&dry_run=false", "dry_run="])
def test_a_dry_run_flag_that_is_not_true_or_false_is_400_and_queues_nothing(editor_client, query):
    body = {"messages": [{"recipient_phone_number": "+905551112233", "content": "x"}]}
    response = editor_client.post(f"/api/messages/bulk/?{query}", body, format="json")
    assert response.status_code == 400 and response.json() == {"dry_run": ["true or false, once."]}
    assert not Message.objects.exists()


def test_personalisation_that_is_not_an_object_is_400(editor_client):
    create(editor_client)
    response = editor_client.post(
        "/api/messages/",
        {"recipient_phone_number": "+905551112233", "template": "appointment", "personalisation": "{}"},
        format="multipart",
    )
    assert response.status_code == 400
    assert response.json() == {"personalisation": ['An object of values by placeholder name: {"name": "Ada"}.']}
    assert editor_client.post("/api/templates/preview/", None, format="json").status_code == 400


def test_scheduling_expiry_idempotency_and_suppression_apply_to_messages_from_a_template(editor_client):
    from consent.models import Consent
    from consent.services import consent_set

    create(editor_client, body="Hi ((name))")
    consent_set(phone_number="+905559999999", status=Consent.Status.OPTED_OUT, method=Consent.Method.API, via="api")
    refused = editor_client.post(
        "/api/messages/",
        {"recipient_phone_number": "+905559999999", "template": "appointment", "personalisation": {"name": "A"}},
        format="json",
    )
    assert refused.status_code == 422
    body = {
        "recipient_phone_number": "+905551112233",
        "template": "appointment",
        "personalisation": {"name": "A"},
        "send_after": "2090-01-01T10:00:00Z",
        "expires_at": "2090-01-02T10:00:00Z",
        "priority": "low",
    }
    first = editor_client.post("/api/messages/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = editor_client.post("/api/messages/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 201 and again.json()["id"] == first.json()["id"]
    message = Message.objects.get()
    assert message.send_after.year == 2090 and message.expires_at.day == 2 and message.priority == "low"
    assert message.content == "Hi A"
