"""The templates' admin: create and edit (versions), restore, live preview, send to a list."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.models import ControlAction
from message_templates import services
from message_templates.models import Template, TemplateVersion
from messages_app.models import Message
from tests.factories import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(make_user(username="root", superuser=True))
    return client


def form(**fields):
    data = {
        "name": "welcome",
        "category": "",
        "default_language": "en",
        "body": "Welcome ((name))",
        "other_languages": "{}",
        "sample": "{}",
        "versions-TOTAL_FORMS": "0",
        "versions-INITIAL_FORMS": "0",
    }
    data.update(fields)
    return data


def test_create_then_edit_makes_versions_and_audits(admin_client):
    response = admin_client.post(
        "/admin/message_templates/template/add/", form(other_languages='{"tr": "Hoş geldin ((name))"}')
    )
    assert response.status_code == 302, response.content.decode()[-3000:]
    template = Template.objects.get()
    assert TemplateVersion.objects.get().bodies == {"en": "Welcome ((name))", "tr": "Hoş geldin ((name))"}
    page = admin_client.get(f"/admin/message_templates/template/{template.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "template_preview.js" in html and "Send to a list" in html and 'id="template-preview"' in html
    data = form(body="Welcome back ((name))", other_languages='{"tr": "Hoş geldin ((name))"}')
    data["versions-TOTAL_FORMS"] = data["versions-INITIAL_FORMS"] = "1"
    data["versions-0-id"] = str(TemplateVersion.objects.get().pk)
    data["versions-0-template"] = str(template.pk)
    response = admin_client.post(f"/admin/message_templates/template/{template.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[-3000:]
    template.refresh_from_db()
    assert template.current_version == 2
    assert TemplateVersion.objects.get(number=2).bodies["en"] == "Welcome back ((name))"
    assert list(ControlAction.objects.values_list("via", flat=True)) == ["admin", "admin"]


def test_a_bad_body_is_a_form_error(admin_client):
    response = admin_client.post(
        "/admin/message_templates/template/add/", form(body=" ", other_languages='{"xx-!": "a"}')
    )
    assert response.status_code == 200
    assert not Template.objects.exists()


def test_restore_from_the_admin(admin_client):
    template = services.template_create(name="t", bodies={"en": "one"}, default_language="en")
    services.template_edit(template_id=template.pk, bodies={"en": "two"})
    url = f"/admin/message_templates/template/{template.pk}/restore/1/"
    assert "Restore" in admin_client.get(url).content.decode()
    assert admin_client.post(url).status_code == 302
    assert TemplateVersion.objects.get(template=template, number=3).bodies == {"en": "one"}


def test_live_preview(admin_client):
    url = "/admin/message_templates/template/preview/"
    answer = admin_client.post(url, {"body": "Hi ((name))", "sample": json.dumps({"name": "Şule"})})
    assert answer.status_code == 200
    assert answer.json()["text"] == "Hi Şule" and answer.json()["encoding"] == "UCS-2"
    assert answer.json()["ucs2_characters"][0]["position"] == 4
    missing = admin_client.post(url, {"body": "Hi ((name))", "sample": "{}"})
    assert missing.status_code == 400 and missing.json() == {"errors": ["Missing personalisation: name."]}
    assert admin_client.post(url, {"body": "x", "sample": "{"}).status_code == 400
    assert admin_client.get(url).status_code == 403


def test_send_to_a_pasted_list_with_dry_run_then_an_uploaded_file(admin_client):
    template = services.template_create(name="t", bodies={"en": "Hi ((name))"}, default_language="en")
    url = f"/admin/message_templates/template/{template.pk}/send/"
    assert admin_client.get(url).status_code == 200
    pasted = "recipient_phone_number,name\n+905551112233,Ada\n+905551112234,Bo\nbad,Cy\n"
    dry = admin_client.post(url, {"recipients": pasted, "dry_run": "on"}, follow=True)
    assert "Would queue 2 messages (2 SMS segments); 1 rows rejected." in dry.content.decode()
    assert "line 4: recipient_phone_number" in dry.content.decode()
    assert not Message.objects.exists()
    upload = SimpleUploadedFile("list.csv", pasted.encode(), content_type="text/csv")
    sent = admin_client.post(url, {"file": upload})
    assert "Queued 2 messages (2 SMS segments)" in sent.content.decode()
    assert sorted(Message.objects.values_list("content", flat=True)) == ["Hi Ada", "Hi Bo"]
    empty = admin_client.post(url, {"recipients": ""})
    assert "Paste a list or choose a file." in empty.content.decode()


def test_send_needs_the_add_message_permission(client):
    template = services.template_create(name="t", bodies={"en": "Hi"}, default_language="en")
    client.force_login(make_user(username="v", staff=True, perms=["message_templates.view_template"]))
    assert client.get(f"/admin/message_templates/template/{template.pk}/send/").status_code == 403


def test_the_message_add_form_takes_a_template(admin_client):
    template = services.template_create(name="t", bodies={"en": "Hi ((name))"}, default_language="en")
    url = "/admin/messages_app/message/add/"
    base = {"recipient_phone_number": "+905551112233", "priority": "normal", "category": ""}
    missing = admin_client.post(url, {**base, "template": "t", "personalisation": "{}"})
    assert missing.status_code == 200 and "Missing personalisation: name." in missing.content.decode()
    both = admin_client.post(url, {**base, "content": "x", "template": "t"})
    assert "Give content or a template, not both." in both.content.decode()
    assert not Message.objects.exists()
    done = admin_client.post(url, {**base, "template": str(template.pk), "personalisation": '{"name": "Ada"}'})
    assert done.status_code == 302
    message = Message.objects.get()
    assert (message.content, message.template_id, message.personalisation) == ("Hi Ada", template.pk, {"name": "Ada"})
