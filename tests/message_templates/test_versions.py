"""Concurrent edits of one template become distinct versions, none lost."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from message_templates import services
from message_templates.models import TemplateVersion

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_edits_create_distinct_versions():
    template = services.template_create(name="race", bodies={"en": "v1"}, default_language="en")
    editors = 6
    start = threading.Barrier(editors)
    errors: list[BaseException] = []

    def edit(n: int) -> None:
        try:
            start.wait(timeout=10)
            services.template_edit(template_id=template.pk, bodies={"en": f"edit {n}"})
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=edit, args=(n,)) for n in range(editors)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    versions = list(TemplateVersion.objects.filter(template=template).order_by("number"))
    assert [v.number for v in versions] == list(range(1, editors + 2))
    # Every edit is one version: none overwrote another.
    assert sorted(v.bodies["en"] for v in versions[1:]) == sorted(f"edit {n}" for n in range(editors))
    template.refresh_from_db()
    assert template.current_version == editors + 1
