"""Who may call what: every endpoint against every kind of caller.

Rules (messages_app/permissions.py):
- reading messages needs view_message, queueing them add_message (staff status
  alone does not help; superusers have every permission);
- starting, stopping and pacing the dispatcher need control_dispatcher;
  requeueing needs requeue_message, cancelling cancel_message; staff status grants none, on any channel
  (token or session, the REST API or the seed routes), as in the admin;
- the dispatcher's state, /status and the API root need only a login;
- the API schema and its documentation pages are public, as they were before:
  they describe the API, and every call they describe still needs a token.

Anonymous callers and revoked tokens get 401, a caller without the permission
403, and a refused call writes nothing. A caller who may requeue or cancel but not
read messages learns nothing more of them from the action (below the matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from django_q.models import OrmQ
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audit.models import ControlAction
from callbacks.models import CallbackEndpoint, CallbackEvent
from dispatcher.models import DispatcherState
from dispatcher.permissions import CONTROL_DISPATCHER
from message_templates.models import Template, TemplateVersion
from messages_app.models import Message
from messages_app.permissions import CANCEL_MESSAGE, REQUEUE_MESSAGE
from tests.factories import make_message, make_user, token_for

pytestmark = pytest.mark.django_db

VIEW = "messages_app.view_message"
ADD = "messages_app.add_message"

# What each rule lets through, by the kind of caller (see PRINCIPALS).
OPEN, LOGIN, READ, WRITE, CONTROL, REQUEUE, CANCEL = "open", "login", "read", "write", "control", "requeue", "cancel"
CONSENT_READ, CONSENT_WRITE, REPLIES_READ = "consent-read", "consent-write", "replies-read"
TEMPLATE_READ, TEMPLATE_WRITE = "template-read", "template-write"
# Status callbacks: the callbacks app's model permissions manage them and read all; other
# users read only what they own. Staff status alone grants nothing, as everywhere.
CALLBACKS_MANAGE = "callbacks-manage"

# name -> keyword arguments of make_user; None: no credentials at all.
PRINCIPALS: dict[str, dict | None] = {
    "anonymous": None,
    "no-perms": {},
    "reader": {"perms": [VIEW]},
    "writer": {"perms": [ADD]},
    "staff": {"staff": True},
    "controller": {"perms": [CONTROL_DISPATCHER]},
    "requeuer": {"perms": [REQUEUE_MESSAGE]},
    "canceller": {"perms": [CANCEL_MESSAGE]},
    "consent-reader": {"perms": ["consent.view_consent"]},
    "consent-editor": {"perms": ["consent.change_consent"]},
    "replies-reader": {"perms": ["consent.view_inboundmessage"]},
    "template-reader": {"perms": ["message_templates.view_template"]},
    "template-editor": {
        "perms": [
            "message_templates.view_template",
            "message_templates.add_template",
            "message_templates.change_template",
        ]
    },
    "callbacks-manager": {
        "perms": [
            "callbacks.view_callbackendpoint",
            "callbacks.add_callbackendpoint",
            "callbacks.change_callbackendpoint",
            "callbacks.delete_callbackendpoint",
        ]
    },
    "superuser": {"superuser": True},
}

ALLOWED: dict[str, set[str]] = {
    OPEN: set(PRINCIPALS),
    LOGIN: set(PRINCIPALS) - {"anonymous"},
    READ: {"reader", "superuser"},
    WRITE: {"writer", "superuser"},
    CONTROL: {"controller", "superuser"},
    REQUEUE: {"requeuer", "superuser"},
    CANCEL: {"canceller", "superuser"},
    CONSENT_READ: {"consent-reader", "superuser"},
    CONSENT_WRITE: {"consent-editor", "superuser"},
    REPLIES_READ: {"replies-reader", "superuser"},
    TEMPLATE_READ: {"template-reader", "template-editor", "superuser"},
    TEMPLATE_WRITE: {"template-editor", "superuser"},
    CALLBACKS_MANAGE: {"callbacks-manager", "superuser"},
}

NEW_MESSAGE = {"recipient_phone_number": "+905551112233", "content": "hi"}


@dataclass(frozen=True)
class Endpoint:
    id: str
    url_name: str  # the route's name, to check that every route is in the matrix
    method: str
    path: str  # "{pk}" is a failed message's id, "{unsent_pk}" an unsent one's
    rule: str
    success: int = 200
    body: dict | None = None
    refused: int = 403  # to a caller with credentials not allowed (404: it may not even see the object)


ENDPOINTS = [
    Endpoint("api-root", "api-root", "get", "/api/", LOGIN),
    Endpoint("list", "message-list", "get", "/api/messages/", READ),
    Endpoint("list-options", "message-list", "options", "/api/messages/", READ),
    Endpoint("create", "message-list", "post", "/api/messages/", WRITE, 201, NEW_MESSAGE),
    Endpoint("bulk", "message-bulk", "post", "/api/messages/bulk/", WRITE, 201, {"messages": [NEW_MESSAGE]}),
    Endpoint("sent", "message-sent", "get", "/api/messages/sent/", READ),
    Endpoint("retrieve", "message-detail", "get", "/api/messages/{pk}/", READ),
    Endpoint("attempts", "message-attempts", "get", "/api/messages/{pk}/attempts/", READ),
    Endpoint("requeue", "message-requeue", "post", "/api/messages/{pk}/requeue/", REQUEUE),
    Endpoint("cancel", "message-cancel", "post", "/api/messages/{unsent_pk}/cancel/", CANCEL),
    Endpoint("dispatcher", "dispatcher", "get", "/api/dispatcher/", LOGIN),
    Endpoint("providers", "providers", "get", "/api/providers/", LOGIN),
    Endpoint("dispatcher-patch", "dispatcher", "patch", "/api/dispatcher/", CONTROL, body={"batch_size": 9}),
    Endpoint("dispatcher-start", "dispatcher-start", "post", "/api/dispatcher/start/", CONTROL),
    Endpoint("dispatcher-stop", "dispatcher-stop", "post", "/api/dispatcher/stop/", CONTROL),
    Endpoint("seed-list", "seed-messages", "get", "/messages", READ),
    Endpoint("seed-create", "seed-messages", "post", "/messages", WRITE, body=NEW_MESSAGE),
    Endpoint("seed-worker-start", "seed-worker", "post", "/messages/worker/start", CONTROL),
    Endpoint("seed-worker-stop", "seed-worker", "post", "/messages/worker/stop", CONTROL),
    Endpoint("seed-status", "seed-status", "get", "/status", LOGIN),
    Endpoint("schema", "schema", "get", "/api/schema/", OPEN),
    Endpoint("docs", "swagger-ui", "get", "/api/docs/", OPEN),
    Endpoint("redoc", "redoc", "get", "/api/redoc/", OPEN),
    Endpoint("consents", "consent-list", "get", "/api/consents/", CONSENT_READ),
    # Allowed, and no consent is recorded for the number: 404 (nobody opted it out).
    Endpoint("consent-get", "consent-detail", "get", "/api/consents/+12125550123/", CONSENT_READ, 404),
    Endpoint(
        "consent-put",
        "consent-detail",
        "put",
        "/api/consents/+12125550124/",
        CONSENT_WRITE,
        body={"status": "opted_out"},
    ),
    # GET only: POST on the same address is the providers' (PUBLIC_BY_DESIGN's "inbound-twilio" beside it).
    Endpoint("replies", "inbound", "get", "/api/inbound/", REPLIES_READ),
    Endpoint("templates", "template-list", "get", "/api/templates/", TEMPLATE_READ),
    Endpoint(
        "template-create", "template-list", "post", "/api/templates/", TEMPLATE_WRITE, 201, {"name": "new", "body": "x"}
    ),
    Endpoint("template-get", "template-detail", "get", "/api/templates/{template_pk}/", TEMPLATE_READ),
    Endpoint(
        "template-put", "template-detail", "put", "/api/templates/{template_pk}/", TEMPLATE_WRITE, body={"body": "y"}
    ),
    Endpoint("template-versions", "template-versions", "get", "/api/templates/{template_pk}/versions/", TEMPLATE_READ),
    Endpoint(
        "template-restore",
        "template-restore",
        "post",
        "/api/templates/{template_pk}/restore/",
        TEMPLATE_WRITE,
        201,
        {"version": 1},
    ),
    Endpoint(
        "template-variant",
        "template-variant",
        "put",
        "/api/templates/{template_pk}/variants/tr/",
        TEMPLATE_WRITE,
        body={"body": "merhaba ((name))"},
    ),
    Endpoint(
        "template-preview",
        "template-preview",
        "post",
        "/api/templates/{template_pk}/preview/",
        TEMPLATE_READ,
        body={"personalisation": {"name": "Ada"}},
    ),
    Endpoint(
        "template-body-preview",
        "template-preview-body",
        "post",
        "/api/templates/preview/",
        TEMPLATE_READ,
        body={"body": "x"},
    ),
    Endpoint("callback-endpoints", "callback-endpoint-list", "get", "/api/callbacks/endpoints/", LOGIN),
    Endpoint(
        "callback-endpoint-create",
        "callback-endpoint-list",
        "post",
        "/api/callbacks/endpoints/",
        CALLBACKS_MANAGE,
        201,
        {"name": "new", "url": "http://127.0.0.1:9/new"},
    ),
    Endpoint(
        "callback-endpoint-get",
        "callback-endpoint-detail",
        "get",
        "/api/callbacks/endpoints/{endpoint_pk}/",
        CALLBACKS_MANAGE,
        refused=404,
    ),
    Endpoint(
        "callback-endpoint-patch",
        "callback-endpoint-detail",
        "patch",
        "/api/callbacks/endpoints/{endpoint_pk}/",
        CALLBACKS_MANAGE,
        body={"name": "renamed"},
    ),
    Endpoint(
        "callback-endpoint-delete",
        "callback-endpoint-detail",
        "delete",
        "/api/callbacks/endpoints/{endpoint_pk}/",
        CALLBACKS_MANAGE,
        204,
    ),
    Endpoint(
        "callback-endpoint-rotate",
        "callback-endpoint-rotate",
        "post",
        "/api/callbacks/endpoints/{endpoint_pk}/rotate/",
        CALLBACKS_MANAGE,
    ),
    Endpoint(
        "callback-endpoint-replay",
        "callback-endpoint-replay",
        "post",
        "/api/callbacks/endpoints/{endpoint_pk}/replay/",
        CALLBACKS_MANAGE,
        body={"since": "2020-01-01T00:00:00Z"},
    ),
    Endpoint("callback-events", "callback-event-list", "get", "/api/callbacks/events/", LOGIN),
    Endpoint(
        "callback-event-get",
        "callback-event-detail",
        "get",
        "/api/callbacks/events/{event_pk}/",
        CALLBACKS_MANAGE,
        refused=404,
    ),
    Endpoint(
        "callback-event-resend",
        "callback-event-resend",
        "post",
        "/api/callbacks/events/{event_pk}/resend/",
        CALLBACKS_MANAGE,
    ),
]

# Routes outside the matrix, public on purpose.
PUBLIC_BY_DESIGN = {
    "seed-swagger": "a redirect to /api/docs/",
    "login": "the browsable API's login form (api-auth/)",
    "logout": "the browsable API's logout (api-auth/)",
    "redoc-bundle": "Redoc's code for the public docs page (tests/messaging_site/test_docs.py)",
    "healthz": "a probe (tests/dispatcher/test_health.py)",
    "readyz": "a probe: its status only; the checks for METRICS_TOKEN or staff (tests/dispatcher/test_health.py)",
    "metrics": "Prometheus, with METRICS_TOKEN; or staff (tests/dispatcher/test_metrics.py)",
    "receipts": "providers' delivery receipts: the signature is the authentication (tests/dispatcher/test_receipts.py)",
    "receipts-twilio": "Twilio's status callbacks: X-Twilio-Signature is the authentication (test_twilio.py)",
    "inbound-twilio": "Twilio's incoming messages: X-Twilio-Signature is the authentication (test_inbound.py)",
}


def set_up() -> Message:
    """A failed message to read and requeue, an unsent one to cancel, and a stopped dispatcher
    to start (or stop again)."""
    DispatcherState.objects.update_or_create(
        pk=DispatcherState.SINGLETON_PK,
        defaults={"running": False, "next_tick_at": None, "batch_size": 3, "interval_seconds": 60},
    )
    make_message(content="to cancel")
    if not Template.objects.exists():
        # Written directly, not by the service: the audit log starts empty.
        template = Template.objects.create(name="matrix")
        TemplateVersion.objects.create(template=template, number=1, bodies={"en": "hi ((name))"}, default_language="en")
    if not CallbackEndpoint.objects.exists():
        # Written directly, not by the service: the audit log starts empty.
        endpoint = CallbackEndpoint.objects.create(
            name="matrix", url="http://127.0.0.1:9/hooks", origin="http://127.0.0.1:9", secret_salt="salt"
        )
        CallbackEvent.objects.create(
            event_id="evt_matrix",
            endpoint=endpoint,
            event_type="message.sent",
            occurred_at=timezone.now(),
            next_attempt_at=timezone.now(),
            created_at=timezone.now(),
            state=CallbackEvent.State.DELIVERED,
        )
    return make_message(status=Message.Status.FAILED, attempts=5, last_error="HTTP 400")


def snapshot() -> dict:
    """Everything a call could write."""
    return {
        "messages": list(Message.objects.order_by("pk").values()),
        "state": DispatcherState.objects.values().get(),
        "audit": ControlAction.objects.count(),
        "queued_tasks": OrmQ.objects.count(),
        "template_versions": list(TemplateVersion.objects.order_by("pk").values()),
        "callback_endpoints": list(CallbackEndpoint.objects.order_by("pk").values()),
        "callback_events": list(CallbackEvent.objects.order_by("pk").values()),
    }


def call(client: APIClient, endpoint: Endpoint, message: Message):
    unsent = Message.objects.get(content="to cancel")
    path = endpoint.path.format(
        pk=message.pk,
        unsent_pk=unsent.pk,
        template_pk=Template.objects.get().pk,
        endpoint_pk=CallbackEndpoint.objects.order_by("pk").first().pk,
        event_pk=CallbackEvent.objects.order_by("pk").first().pk,
    )
    return getattr(client, endpoint.method)(path, endpoint.body, format="json")


def client_with_token(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(user)}")
    return client


def client_as(principal: str) -> APIClient:
    options = PRINCIPALS[principal]
    return APIClient() if options is None else client_with_token(make_user(username=principal, **options))


def assert_refused(response, status: int, before: dict, endpoint: Endpoint) -> None:
    assert response.status_code == status, (endpoint.id, response.status_code, response.content)
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Token"), endpoint.id
    assert snapshot() == before, f"{endpoint.id}: a refused call wrote something"


@pytest.mark.parametrize("principal", list(PRINCIPALS))
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.id)
def test_the_matrix(endpoint: Endpoint, principal: str, django_capture_on_commit_callbacks):
    message = set_up()
    client = client_as(principal)
    before = snapshot()

    with django_capture_on_commit_callbacks(execute=True):
        response = call(client, endpoint, message)

    if principal in ALLOWED[endpoint.rule]:
        assert response.status_code == endpoint.success, (endpoint.id, principal, response.content)
    else:
        assert_refused(response, 401 if principal == "anonymous" else endpoint.refused, before, endpoint)


SECURED = [e for e in ENDPOINTS if e.rule != OPEN]


@pytest.mark.parametrize("endpoint", SECURED, ids=lambda e: e.id)
def test_a_deleted_token_is_401_and_writes_nothing(endpoint: Endpoint):
    message = set_up()
    user = make_user(username="root", superuser=True)
    client = client_with_token(user)
    Token.objects.filter(user=user).delete()  # revoked
    before = snapshot()

    assert_refused(call(client, endpoint, message), 401, before, endpoint)


@pytest.mark.parametrize("endpoint", SECURED, ids=lambda e: e.id)
def test_a_regenerated_token_retires_the_old_key(endpoint: Endpoint, django_capture_on_commit_callbacks):
    message = set_up()
    user = make_user(username="root", superuser=True)
    old = client_with_token(user)
    Token.objects.filter(user=user).delete()
    new = client_with_token(user)  # a fresh key, as `drf_create_token -r` makes
    before = snapshot()

    assert_refused(call(old, endpoint, message), 401, before, endpoint)
    with django_capture_on_commit_callbacks(execute=True):
        assert call(new, endpoint, message).status_code == endpoint.success


CONTROLS = [e for e in ENDPOINTS if e.rule in (CONTROL, REQUEUE, CANCEL)]
OPERATOR_PERMISSION = {CONTROL: CONTROL_DISPATCHER, REQUEUE: REQUEUE_MESSAGE, CANCEL: CANCEL_MESSAGE}


def session_client(user) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/api-auth/login/")  # a page with a form sets the CSRF cookie, as a browser session has it
    client.credentials(HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)
    return client


CHANNELS = {"token": client_with_token, "session": session_client}


@pytest.mark.parametrize("channel", list(CHANNELS))
@pytest.mark.parametrize("endpoint", CONTROLS, ids=lambda e: e.id)
def test_staff_status_alone_controls_nothing_on_any_channel(endpoint: Endpoint, channel: str):
    message = set_up()
    staff = make_user(username="staff-only", staff=True, perms=[VIEW, ADD])
    before = snapshot()

    assert_refused(call(CHANNELS[channel](staff), endpoint, message), 403, before, endpoint)


@pytest.mark.parametrize("channel", list(CHANNELS))
@pytest.mark.parametrize("endpoint", CONTROLS, ids=lambda e: e.id)
def test_the_permission_controls_on_every_channel(endpoint: Endpoint, channel: str, django_capture_on_commit_callbacks):
    message = set_up()
    operator = make_user(username="operator", perms=[OPERATOR_PERMISSION[endpoint.rule]])  # not staff

    with django_capture_on_commit_callbacks(execute=True):
        response = call(CHANNELS[channel](operator), endpoint, message)

    assert response.status_code == endpoint.success, (endpoint.id, channel, response.content)


# --- acting on messages without reading them -------------------------------------------------------

Status = Message.Status
# action -> (its permission, the status it acts on, a status it refuses)
ACTIONS = {
    "requeue": (REQUEUE_MESSAGE, Status.FAILED, Status.SENT),
    "cancel": (CANCEL_MESSAGE, Status.UNSENT, Status.FAILED),
}


@pytest.mark.parametrize("action", list(ACTIONS))
def test_who_may_act_but_not_read_gets_only_the_id_and_the_new_status(action):
    # Issue 20: the 200 carried the whole message, number and content, to a user without view_message.
    permission, acts_on, _ = ACTIONS[action]
    message = make_message(status=acts_on, content="Your code is 4821")
    client = client_with_token(make_user(username="actor", perms=[permission]))

    response = client.post(f"/api/messages/{message.pk}/{action}/")

    assert response.status_code == 200, response.content
    message.refresh_from_db()
    assert response.json() == {"id": message.pk, "status": message.status}
    assert message.status != acts_on


@pytest.mark.parametrize("action", list(ACTIONS))
def test_who_may_act_but_not_read_cannot_tell_which_ids_exist(action):
    # Issue 20: 404 for an id that does not exist, 409 for one that does, so ids could be listed.
    permission, _, refused = ACTIONS[action]
    message = make_message(status=refused)
    client = client_with_token(make_user(username="actor", perms=[permission]))
    before = snapshot()

    existing = client.post(f"/api/messages/{message.pk}/{action}/")
    missing = client.post(f"/api/messages/{message.pk + 1000}/{action}/")

    assert (existing.status_code, existing.json()) == (missing.status_code, missing.json())
    assert existing.status_code == 404
    assert snapshot() == before


@pytest.mark.parametrize("action", list(ACTIONS))
def test_who_may_also_read_gets_the_message_and_is_told_why_an_action_is_refused(action):
    permission, acts_on, refused = ACTIONS[action]
    done, other = make_message(status=acts_on), make_message(status=refused)
    client = client_with_token(make_user(username="operator", perms=[permission, VIEW]))

    response = client.post(f"/api/messages/{done.pk}/{action}/")
    assert response.status_code == 200
    assert response.json()["recipient_phone_number"] == done.recipient_phone_number
    assert client.post(f"/api/messages/{other.pk}/{action}/").status_code == 409
    assert client.post(f"/api/messages/{other.pk + 1000}/{action}/").status_code == 404


def test_an_inactive_operator_is_refused_even_with_the_control_permission():
    set_up()
    user = make_user(username="former", perms=[CONTROL_DISPATCHER])
    client = client_with_token(user)
    user.is_active = False
    user.save()

    assert client.post("/api/dispatcher/start/").status_code == 401
    assert DispatcherState.objects.get().running is False
    assert not ControlAction.objects.exists()


def test_a_permission_given_through_a_group_counts():
    set_up()
    operators = Group.objects.create(name="operators")
    operators.permissions.add(Permission.objects.get(codename="control_dispatcher"))
    user = make_user(username="grouped")
    user.groups.add(operators)

    assert client_with_token(user).post("/api/dispatcher/start/").status_code == 200
    assert DispatcherState.objects.get().running is True


def test_unsupported_methods_stay_405_for_a_caller_without_permissions():
    # Not 403: no permission would make PUT work.
    message = set_up()
    client = client_as("no-perms")
    assert client.put(f"/api/messages/{message.pk}/", NEW_MESSAGE, format="json").status_code == 405
    assert client.delete(f"/api/messages/{message.pk}/").status_code == 405
    assert client.delete("/messages").status_code == 405
    assert Message.objects.filter(pk=message.pk).exists()


def test_anonymous_unsupported_methods_are_still_401():
    message = set_up()
    assert APIClient().delete(f"/api/messages/{message.pk}/").status_code == 401


def _route_names(patterns) -> set[str]:
    names: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            if pattern.namespace == "admin":  # Django's admin checks staff and model permissions itself
                continue
            names |= _route_names(pattern.url_patterns)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(pattern.name)
    return names


def test_every_route_is_in_the_matrix_or_public_by_design():
    routes = _route_names(get_resolver().url_patterns)
    covered = {e.url_name for e in ENDPOINTS} | set(PUBLIC_BY_DESIGN)
    # "dashboard" is the admin dashboard's short address, a redirect into the admin.
    assert routes - covered - {"dashboard"} == set(), "add the new route to ENDPOINTS (or PUBLIC_BY_DESIGN)"
