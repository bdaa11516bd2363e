"""Ways to make test data, in one place."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone
from rest_framework.authtoken.models import Token

from dispatcher.engine.pipeline import send_chunk
from messages_app.models import Message
from messages_app.transitions import messages_claim

_phone_counter = itertools.count(1000)


def phone_number() -> str:
    """A distinct valid Turkish mobile number in E.164."""
    return f"+90555{next(_phone_counter):07d}"


def make_message(*, status: str = Message.Status.UNSENT, content: str = "hello", **fields) -> Message:
    fields.setdefault("recipient_phone_number", phone_number())
    if status == Message.Status.SENT:
        fields.setdefault("sent_at", timezone.now())
        fields.setdefault("provider_message_id", f"provider-{next(_phone_counter)}")
    return Message.objects.create(status=status, content=content, **fields)


def claimed_message(**fields) -> Message:
    """An unsent message claimed the way a tick claims one (status processing, a
    claim token and a lease), as a worker receives it."""
    message = make_message(**fields)
    messages_claim(message_ids=[message.pk], claim_token=uuid.uuid4(), lease_seconds=60)
    message.refresh_from_db()
    return message


def deliver(message: Message, provider):
    """Send one claimed message through the pipeline and return its DeliveryOutcome."""
    report = send_chunk(message_ids=[message.pk], claim_token=message.claim_token, provider=provider)
    [outcome] = report.outcomes
    return outcome


# What an API client that queues and reads messages needs (the `user` fixture).
MESSAGE_CLIENT_PERMS = ("messages_app.view_message", "messages_app.add_message")


def make_user(*, username: str = "alice", staff: bool = False, superuser: bool = False, perms: Iterable[str] = ()):
    """A user with password "pw-for-tests-only" and the given "app_label.codename" permissions."""
    User = get_user_model()
    user = User.objects.create_user(
        username=username, password="pw-for-tests-only", is_staff=staff or superuser, is_superuser=superuser
    )
    grant(user, *perms)
    return user


def grant(user, *perms: str):
    """Give `user` the permissions named "app_label.codename"; return the user, reloaded
    so that its permission cache does not hide them."""
    for perm in perms:
        app_label, codename = perm.split(".", 1)
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return get_user_model().objects.get(pk=user.pk)


def token_for(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key
