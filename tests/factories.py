"""Ways to make test data, in one place."""

from __future__ import annotations

import itertools

from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.authtoken.models import Token

from messages_app.models import Message

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


def make_user(*, username: str = "alice", staff: bool = False, superuser: bool = False):
    User = get_user_model()
    return User.objects.create_user(
        username=username, password="pw-for-tests-only", is_staff=staff or superuser, is_superuser=superuser
    )


def token_for(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key
