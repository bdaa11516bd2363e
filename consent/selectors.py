"""Reads of consent, for the API, the admin, message creation and the dispatcher."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import QuerySet

from consent.models import Consent, ConsentChange, InboundMessage


def consent_list() -> QuerySet[Consent]:
    return Consent.objects.all()


def consent_for_number(*, phone_number: str) -> Consent | None:
    """The record of `phone_number` (E.164), or None: nobody has opted it in or out."""
    return Consent.objects.filter(phone_number=phone_number).first()


def consent_history(*, consent_id: int) -> QuerySet[ConsentChange]:
    return ConsentChange.objects.filter(consent_id=consent_id).order_by("-changed_at", "-id")


def numbers_opted_out(*, phone_numbers: Iterable[str]) -> set[str]:
    """Which of `phone_numbers` (E.164) are opted out: one query, on the opted-out index."""
    numbers = sorted(set(phone_numbers))
    if not numbers:
        return set()
    return set(
        Consent.objects.filter(phone_number__in=numbers, status=Consent.Status.OPTED_OUT).values_list(
            "phone_number", flat=True
        )
    )


def inbound_list() -> QuerySet[InboundMessage]:
    return InboundMessage.objects.all()
