"""`manage.py import_messages --template`: a column per placeholder, rows checked as the API
checks a message, the template read once, the dry run giving the segments."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from message_templates import services
from messages_app.models import Message

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def template():
    return services.template_create(
        name="reminder",
        bodies={"en": "Hi ((name)), at ((Time)).", "tr": "Merhaba ((name)), saat ((time))."},
        default_language="en",
    )


def csv_file(tmp_path, text: str) -> str:
    path = tmp_path / "rows.csv"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_import_from_a_template_fills_each_row(tmp_path, template):
    path = csv_file(
        tmp_path,
        "recipient_phone_number,Name,time,language,priority\n"
        "+905551112233,Ada,10:00,,high\n"
        "+905551112234,Şule,11:00,tr,\n",
    )
    out, _ = run("import_messages", path, "--template", "reminder")
    assert out == "Imported 2 messages; 0 rows rejected.\n"
    first, second = Message.objects.order_by("id")
    assert (first.content, first.priority, first.template_language) == ("Hi Ada, at 10:00.", "high", "en")
    assert first.personalisation == {"Name": "Ada", "time": "10:00"}
    assert (second.content, second.template_language, second.template_version) == ("Merhaba Şule, saat 11:00.", "tr", 1)
    assert first.template_id == template.pk


def test_rows_missing_a_value_are_rejected_with_their_line_and_the_dry_run_counts_segments(tmp_path, template):
    path = csv_file(
        tmp_path,
        "recipient_phone_number,name,time\n+905551112233,Ada,10:00\n+905551112234,Şule,11:00\n+905551112235,Bo\n",
    )
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="rejected"):
        call_command("import_messages", path, "--template", str(template.pk), "--dry-run", stdout=out, stderr=err)
    assert out.getvalue() == "Dry run: would import 2 messages (2 SMS segments); 1 row rejected. Nothing was stored.\n"
    assert "line 4: personalisation: " in err.getvalue()
    assert not Message.objects.exists()


def test_a_missing_column_is_every_rows_problem_and_a_missing_template_stops_the_import(tmp_path, template):
    path = csv_file(tmp_path, "recipient_phone_number,name\n+905551112233,Ada\n")
    _, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError):
        call_command("import_messages", path, "--template", "reminder", stdout=io.StringIO(), stderr=err)
    assert "Missing personalisation: time." in err.getvalue()
    with pytest.raises(CommandError, match="No template 'nope'"):
        run("import_messages", path, "--template", "nope")
    with pytest.raises(CommandError, match="has no version 5"):
        run("import_messages", path, "--template", "reminder", "--template-version", "5")
    content = csv_file(tmp_path, "recipient_phone_number,content\n+905551112233,x\n")
    with pytest.raises(CommandError, match="no content column"):
        run("import_messages", content, "--template", "reminder")
    with pytest.raises(CommandError, match="go with --template"):
        run("import_messages", content, "--language", "tr")
    assert not Message.objects.exists()


def test_the_import_reads_the_template_once(tmp_path, template, django_assert_max_num_queries):
    rows = "".join(f"+90555{i:07d},N{i},9\n" for i in range(500))
    path = csv_file(tmp_path, "recipient_phone_number,name,time\n" + rows)
    with django_assert_max_num_queries(12):
        run("import_messages", path, "--template", "reminder", "--batch-size", "250")
    assert Message.objects.count() == 500
