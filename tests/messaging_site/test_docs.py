import re

import pytest
import yaml
from django.core.management import call_command

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
    }
    assert set(components["MessageStatusEnum"]["enum"]) == {
        "unsent",
        "processing",
        "sent",
        "failed",
        "cancelled",
        "expired",
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
