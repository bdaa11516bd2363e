import json
import re
from pathlib import Path

import pytest
import yaml
from django.contrib.staticfiles import finders
from django.core.management import call_command
from rest_framework.test import APIClient

from callbacks.services import endpoint_create
from message_templates.services import template_create
from restapi.docs import REDOC_BUNDLE
from tests.factories import grant

pytestmark = pytest.mark.django_db

EXPECTED_PATHS = {
    "/api/messages/": {"get", "post"},
    "/api/messages/{id}/": {"get"},
    "/api/messages/{id}/requeue/": {"post"},
    "/api/messages/bulk/": {"post"},
    "/api/messages/sent/": {"get"},
    "/api/dispatcher/": {"get", "patch"},
    "/api/dispatcher/start/": {"post"},
    "/api/dispatcher/stop/": {"post"},
    "/messages/": {"get", "post"},
    "/messages/worker/{action}/": {"post"},
    "/status/": {"get"},
}

HTTP_METHODS = {"get", "put", "post", "patch", "delete", "head", "options", "trace"}

THIRD_PARTY_MARKERS = ["cdn.jsdelivr", "unpkg", "cdnjs", "googleapis", "gstatic"]


def _referenced_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


def _script_and_style_urls(html: str) -> list[str]:
    scripts = re.findall(r"""<script[^>]+src=["']([^"']+)["']""", html)
    styles = re.findall(r"""<link[^>]+rel=["']stylesheet["'][^>]*href=["']([^"']+)["']""", html)
    return scripts + styles


# --- the schema ---------------------------------------------------------------------------


def test_schema_is_openapi_3_with_every_path(anon_client):
    response = anon_client.get("/api/schema/", {"format": "json"})

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Message sending service API"
    for path, methods in EXPECTED_PATHS.items():
        assert path in schema["paths"], path
        assert set(schema["paths"][path]) & HTTP_METHODS == methods, path


def test_schema_is_yaml_by_default(anon_client):
    response = anon_client.get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    assert set(EXPECTED_PATHS) <= set(schema["paths"])


def test_schema_documents_token_authentication(anon_client):
    schema = anon_client.get("/api/schema/", {"format": "json"}).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["tokenAuth"]["type"] == "apiKey"
    assert schemes["tokenAuth"]["name"] == "Authorization"
    create = schema["paths"]["/api/messages/"]["post"]
    assert {"tokenAuth": []} in create["security"]


def test_schema_documents_the_message_fields_and_statuses(anon_client):
    schema = anon_client.get("/api/schema/", {"format": "json"}).json()
    components = schema["components"]["schemas"]
    assert set(components["Message"]["properties"]) == {
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
    assert set(components["MessageStatusEnum"]["enum"]) == {
        "unsent",
        "processing",
        "sent",
        "failed",
        "cancelled",
        "expired",
        "suppressed",
    }
    # The seed routes keep the Go service's shape.
    assert "priority" not in components["SeedMessage"]["properties"]
    requeue = schema["paths"]["/api/messages/{id}/requeue/"]["post"]
    assert {"200", "409"} <= set(requeue["responses"])


def test_schema_validates_without_warnings(tmp_path):
    target = tmp_path / "schema.yml"

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))

    schema = yaml.safe_load(target.read_text())
    assert schema["openapi"].startswith("3.")
    assert set(EXPECTED_PATHS) <= set(schema["paths"])


# --- what the schema says -------------------------------------------------------------------------

SETTING_NAMES = re.compile(r"\b(MESSAGE_[A-Z_]+|THROTTLE_[A-Z_]+|MAX_REQUEST_BODY_BYTES|DISPATCH_[A-Z_]+)\b")


def schema_json(client) -> dict:
    return client.get("/api/schema/", {"format": "json"}).json()


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def test_descriptions_give_the_configured_numbers_not_setting_names(anon_client, settings):
    settings.MESSAGE_BULK_MAX_ITEMS = 250
    settings.MESSAGE_MAX_LENGTH = 160
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 5_000_000

    schema = schema_json(anon_client)

    assert SETTING_NAMES.findall(json.dumps(schema)) == []
    bulk = schema["paths"]["/api/messages/bulk/"]["post"]
    assert bulk["summary"] == "Queue up to 250 messages, all or nothing"
    assert "Up to 250 messages" in bulk["description"]
    assert bulk["responses"]["413"]["description"] == "The request body is over the size limit of 5000000 bytes."
    assert "more than 1000000/min per user" in bulk["responses"]["429"]["description"]  # tests.settings' rate
    content = schema["components"]["schemas"]["MessageCreateRequest"]["properties"]["content"]
    assert content["description"].startswith("1 to 160 characters")


def test_start_and_stop_each_describe_what_they_do(anon_client):
    schema = schema_json(anon_client)
    described = {
        (path, method): operation["description"]
        for path, method, operation in operations(schema)
        if path.startswith("/api/dispatcher")
    }

    assert len(set(described.values())) == len(described) == 4  # one each, not the viewset's docstring
    assert "first tick is due at once" in described["/api/dispatcher/start/", "post"]
    assert "No message is claimed any more once this answers" in described["/api/dispatcher/stop/", "post"]


EXAMPLE_CALLERS = {
    ("/api/messages/", "post"): 201,
    ("/api/messages/bulk/", "post"): 201,
    ("/api/dispatcher/", "patch"): 200,
    ("/api/consents/{phone_number}/", "put"): 200,
    ("/messages/", "post"): 200,
    ("/api/templates/", "post"): 201,
    ("/api/templates/{id}/", "put"): 200,
    ("/api/templates/{id}/restore/", "post"): 201,
    ("/api/templates/{id}/variants/{language}/", "put"): 200,
    ("/api/templates/{id}/preview/", "post"): 200,
    ("/api/templates/preview/", "post"): 200,
}
# Status callbacks, with the callbacks app's permissions ({id}: the callback endpoint the test registers).
CALLBACK_EXAMPLE_CALLERS = {
    ("/api/callbacks/endpoints/", "post"): 201,
    ("/api/callbacks/endpoints/{id}/", "patch"): 200,
    ("/api/callbacks/endpoints/{id}/rotate/", "post"): 200,
    ("/api/callbacks/endpoints/{id}/replay/", "post"): 200,
}
# A path parameter as Swagger UI's "Try it out" would be given it ({id}: the template the test makes).
EXAMPLE_PATH_PARAMETERS = {"{phone_number}": "+12125550123", "{language}": "tr"}


def test_every_request_body_has_examples_that_succeed_as_they_stand(anon_client, operator_user, operator_client):
    from dispatcher.state import dispatcher_state_ensure

    dispatcher_state_ensure()
    grant(operator_user, "consent.view_consent", "consent.change_consent")
    grant(operator_user, *(f"message_templates.{perm}_template" for perm in ("view", "add", "change")))
    grant(operator_user, *(f"callbacks.{perm}_callbackendpoint" for perm in ("view", "add", "change")))
    template = template_create(
        name="reminder",
        bodies={"en": "Hi ((name)), see you at ((time)).((vip?? Free parking.))"},
        default_language="en",
    )
    path_parameters = {**EXAMPLE_PATH_PARAMETERS, "{id}": str(template.pk)}
    schema = schema_json(anon_client)
    # Receipt and reply callbacks are signed by the provider: no example can succeed as it stands.
    with_body = {
        (path, method)
        for path, method, operation in operations(schema)
        if "requestBody" in operation and not path.startswith(("/api/receipts/", "/api/inbound/"))
    }
    assert with_body == set(EXAMPLE_CALLERS) | set(CALLBACK_EXAMPLE_CALLERS)

    endpoint = endpoint_create(name="docs", url="http://127.0.0.1:9/hooks").endpoint
    for callers, client, parameters in (
        (EXAMPLE_CALLERS, operator_client, path_parameters),
        (CALLBACK_EXAMPLE_CALLERS, operator_client, {"{id}": str(endpoint.pk)}),
    ):
        for (path, method), status in callers.items():
            examples = schema["paths"][path][method]["requestBody"]["content"]["application/json"]["examples"]
            assert examples, path
            for name, example in examples.items():
                # What Swagger UI's "Try it out" sends: the example's JSON, to the documented path.
                called = path
                for parameter, value in parameters.items():
                    called = called.replace(parameter, value)
                response = getattr(client, method)(called, example["value"], format="json")
                assert response.status_code == status, (path, name, response.content)


# --- the documentation pages --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/docs/", "/api/redoc/"])
def test_docs_pages_are_html_and_load_their_code_from_local_static_files(anon_client, path):
    response = anon_client.get(path)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "cdn.jsdelivr" not in html
    assert "unpkg" not in html
    assets = _script_and_style_urls(html)
    assert any(url.endswith(".js") for url in assets)
    for url in assets:
        if "fonts.googleapis.com" in url:
            continue  # Redoc's web font; see the test below
        if url == f"{path}?script=":
            continue  # Swagger UI's start-up script, from the view itself: see the test below
        if url == "/api/redoc/redoc.standalone.js":
            continue  # Redoc's bundle less Redocly's logo, from restapi/docs.py: see the test below
        assert url.startswith("/static/"), url
        served = anon_client.get(url)
        assert served.status_code == 200, url
        body = b"".join(served.streaming_content) if served.streaming else served.content
        served.close()
        assert len(body) > 1000, url


def test_swagger_ui_references_nothing_outside_this_site(anon_client):
    html = anon_client.get("/api/docs/").content.decode()
    for url in _referenced_urls(html):
        assert url.startswith("/"), url
    for marker in THIRD_PARTY_MARKERS:
        assert marker not in html


def test_redoc_references_nothing_outside_this_site(anon_client):
    html = anon_client.get("/api/redoc/").content.decode()
    for url in _referenced_urls(html):
        assert url.startswith("/"), url
    for marker in THIRD_PARTY_MARKERS:
        assert marker not in html


def test_docs_pages_point_at_the_schema(anon_client):
    assert "/api/schema/" in anon_client.get("/api/redoc/").content.decode()
    # Swagger UI starts from a script file, not an inline script (the CSP allows none).
    html = anon_client.get("/api/docs/").content.decode()
    assert '<script src="/api/docs/?script="></script>' in html
    assert "<script>" not in html
    script = anon_client.get("/api/docs/?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert "/api/schema/" in script.content.decode()


def test_redoc_starts_without_an_inline_script(anon_client):
    html = anon_client.get("/api/redoc/").content.decode()
    assert '<redoc spec-url="/api/schema/"></redoc>' in html
    assert "<script>" not in html


def test_root_redirects_to_the_docs(anon_client):
    response = anon_client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/api/docs/"


# --- the icon, Redoc's logo -------------------------------------------------------------------------


def body_of(response) -> bytes:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    response.close()
    return body


def test_the_site_serves_its_icon_at_the_root(anon_client):
    ico = anon_client.get("/favicon.ico")
    assert ico.status_code == 200
    assert ico["Content-Type"] in ("image/x-icon", "image/vnd.microsoft.icon")
    assert body_of(ico).startswith(b"\x00\x00\x01\x00")  # an ICO file

    svg = anon_client.get("/favicon.svg")
    assert svg.status_code == 200
    assert svg["Content-Type"].startswith("image/svg+xml")
    assert b"<svg" in body_of(svg)


@pytest.mark.parametrize("path", ["/api/docs/", "/api/redoc/"])
def test_the_docs_pages_use_the_site_s_icon(anon_client, path):
    html = anon_client.get(path).content.decode()
    assert re.search(r'<link rel="icon"[^>]*href="/favicon\.(ico|svg)"', html), html


def test_redoc_shows_the_service_s_logo_and_may_load_images_from_this_site_only(anon_client):
    html = anon_client.get("/api/redoc/").content.decode()
    schema = schema_json(anon_client)

    # Redoc's own logo comes from cdn.redoc.ly: the policy keeps the browser from asking.
    assert """<meta http-equiv="Content-Security-Policy" content="img-src 'self' data:">""" in html
    assert schema["info"]["x-logo"]["url"] == "/favicon.svg"
    assert anon_client.get("/favicon.svg").status_code == 200


def test_redoc_s_code_is_the_sidecar_s_without_redocly_s_logo(anon_client):
    page = anon_client.get("/api/redoc/").content.decode()
    assert '<script src="/api/redoc/redoc.standalone.js"></script>' in page

    response = anon_client.get("/api/redoc/redoc.standalone.js")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/javascript; charset=utf-8"
    assert "max-age=" in response["Cache-Control"]
    bundle = response.content.decode()
    original = (Path(finders.find(REDOC_BUNDLE))).read_text(encoding="utf-8")
    assert "cdn.redoc.ly" in original
    assert "cdn.redoc.ly" not in bundle
    assert "API docs by Redocly" in bundle  # the credit stays, as text
    assert len(original) - len(bundle) < 200  # the logo's element, nothing else
    assert anon_client.get("/api/redoc/redoc.standalone.js", HTTP_IF_NONE_MATCH=response["ETag"]).status_code == 304
    assert anon_client.post("/api/redoc/redoc.standalone.js").status_code == 405


# --- the API's root -----------------------------------------------------------------------------------


def test_the_api_root_describes_the_service_and_links_its_parts(api_client):
    response = api_client.get("/api/")

    assert response.status_code == 200
    body = response.json()
    assert body["description"].startswith("Queue SMS messages and let the dispatcher send them")
    assert {name: url.removeprefix("http://testserver") for name, url in body.items() if name != "description"} == {
        "messages": "/api/messages/",
        "sent_messages": "/api/messages/sent/",
        "bulk": "/api/messages/bulk/",
        "dispatcher": "/api/dispatcher/",
        "providers": "/api/providers/",
        "templates": "/api/templates/",
        "consents": "/api/consents/",
        "callback_endpoints": "/api/callbacks/endpoints/",
        "callback_events": "/api/callbacks/events/",
        "inbound": "/api/inbound/",
        "docs": "/api/docs/",
        "redoc": "/api/redoc/",
        "schema": "/api/schema/",
    }
    for name in ("messages", "sent_messages", "dispatcher", "docs", "redoc", "schema"):
        assert api_client.get(body[name]).status_code == 200, name


def test_the_api_root_in_a_browser_is_a_page_about_the_service(user):

    browser = APIClient()
    browser.force_login(user)

    html = browser.get("/api/", HTTP_ACCEPT="text/html").content.decode()

    assert "<h1>Message sending service API</h1>" in html
    assert "at a controlled rate" in html
    assert "/api/dispatcher/" in html


def test_the_api_root_in_a_browser_shows_code_as_code_not_backticks(user):

    browser = APIClient()
    browser.force_login(user)

    html = browser.get("/api/", HTTP_ACCEPT="text/html").content.decode()
    description = html.split('<div class="pull-left">', 1)[1].split("</div>", 1)[0]
    assert "at a controlled rate" in description

    assert "<code>Authorization: Token &lt;key&gt;</code>" in description
    assert "`" not in description


def test_the_api_root_needs_a_login_and_is_not_an_operation(anon_client):
    assert anon_client.get("/api/").status_code == 401
    assert "/api/" not in schema_json(anon_client)["paths"]
