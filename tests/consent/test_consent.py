"""Consent records: the service, the API, the admin and the CSV commands."""

from __future__ import annotations

import io

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import ControlAction
from consent.models import Consent, ConsentChange
from consent.selectors import numbers_opted_out
from consent.services import consent_set
from tests.factories import make_user

pytestmark = pytest.mark.django_db

NUMBER = "+12125550123"  # New York
OPTED_OUT, OPTED_IN = Consent.Status.OPTED_OUT, Consent.Status.OPTED_IN
CONSENT_PERMS = ("consent.view_consent", "consent.change_consent")


def test_a_change_is_the_record_its_history_and_an_audit_entry():
    operator = make_user(username="opal")
    result = consent_set(
        phone_number="+1 (212) 555-0123", status=OPTED_OUT, method=Consent.Method.API, via="api", actor=operator
    )
    assert result.changed
    consent = Consent.objects.get()
    assert (consent.phone_number, consent.status, consent.method, consent.changed_by) == (
        NUMBER,
        OPTED_OUT,
        "api",
        "opal",
    )
    [change] = ConsentChange.objects.all()
    assert (change.status, change.actor, change.changed_by) == (OPTED_OUT, operator, "opal")
    audit = ControlAction.objects.get(action=ControlAction.Action.CONSENT)
    assert audit.detail["phone_number"] == NUMBER and audit.actor == operator

    # The same status again changes nothing and records nothing.
    assert not consent_set(phone_number=NUMBER, status=OPTED_OUT, method="api", via="api", actor=operator).changed
    assert ConsentChange.objects.count() == 1

    consent_set(phone_number=NUMBER, status=OPTED_IN, method=Consent.Method.ADMIN, via="admin", actor=operator)
    assert [c.status for c in ConsentChange.objects.order_by("id")] == [OPTED_OUT, OPTED_IN]
    assert numbers_opted_out(phone_numbers=[NUMBER]) == set()


def test_an_invalid_number_is_refused_and_nothing_is_written():
    with pytest.raises(ValidationError):
        consent_set(phone_number="+1 555", status=OPTED_OUT, method="api", via="api")
    assert not Consent.objects.exists() and not ControlAction.objects.exists()


def test_numbers_opted_out_answers_for_many_numbers_in_one_query(django_assert_num_queries):
    others = [f"+1212555{n:04d}" for n in range(200, 210)]
    consent_set(phone_number=NUMBER, status=OPTED_OUT, method="api", via="api")
    consent_set(phone_number=others[0], status=OPTED_IN, method="api", via="api")
    with django_assert_num_queries(1):
        assert numbers_opted_out(phone_numbers=[NUMBER, *others]) == {NUMBER}


# --- API ------------------------------------------------------------------------------------


@pytest.fixture
def consent_client(client_for):
    return client_for(make_user(username="carla", perms=CONSENT_PERMS))


def test_put_then_get_a_number(consent_client):
    answer = consent_client.put(f"/api/consents/{NUMBER}/", {"status": "opted_out", "note": "by phone"}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["status"] == "opted_out"
    # Any format of the number finds the same record.
    answer = consent_client.get("/api/consents/+1 212 555 0123/")
    body = answer.json()
    assert answer.status_code == 200
    assert (body["phone_number"], body["method"], body["changed_by"], body["note"]) == (
        NUMBER,
        "api",
        "carla",
        "by phone",
    )
    assert [h["status"] for h in body["history"]] == ["opted_out"]


def test_get_a_number_never_recorded_is_404_and_an_invalid_one_400(consent_client):
    assert consent_client.get(f"/api/consents/{NUMBER}/").status_code == 404
    assert consent_client.get("/api/consents/12/").status_code == 400


def test_put_refuses_an_unknown_status_or_field(consent_client):
    assert consent_client.put(f"/api/consents/{NUMBER}/", {"status": "maybe"}, format="json").status_code == 400
    answer = consent_client.put(f"/api/consents/{NUMBER}/", {"status": "opted_out", "who": "x"}, format="json")
    assert answer.status_code == 400 and "who" in answer.json()
    assert not Consent.objects.exists()


def test_the_list_filters_by_status_and_method(consent_client):
    consent_set(phone_number=NUMBER, status=OPTED_OUT, method=Consent.Method.KEYWORD, via="inbound")
    consent_set(phone_number="+12125550124", status=OPTED_IN, method=Consent.Method.API, via="api")
    numbers = lambda query: [c["phone_number"] for c in consent_client.get(f"/api/consents/{query}").json()["results"]]  # noqa: E731
    assert numbers("?status=opted_out") == [NUMBER]
    assert numbers("?method=api") == ["+12125550124"]
    assert len(numbers("")) == 2


def test_permissions(client_for, api_client):
    assert api_client.get("/api/consents/").status_code == 403
    reader = client_for(make_user(username="rita", perms=["consent.view_consent"]))
    assert reader.get("/api/consents/").status_code == 200
    assert reader.put(f"/api/consents/{NUMBER}/", {"status": "opted_out"}, format="json").status_code == 403
    assert not Consent.objects.exists()


# --- admin ----------------------------------------------------------------------------------


def test_the_admin_adds_through_the_service_and_shows_the_history(client):
    admin_user = make_user(username="root", superuser=True)
    client.force_login(admin_user)
    answer = client.post(
        "/admin/consent/consent/add/",
        {
            "phone_number": "+1 212 555 0123",
            "status": "opted_out",
            "note": "",
            # The history inline's (empty) management form.
            "history-TOTAL_FORMS": "0",
            "history-INITIAL_FORMS": "0",
        },
    )
    assert answer.status_code == 302, answer.content
    consent = Consent.objects.get()
    assert (consent.phone_number, consent.method, consent.changed_by) == (NUMBER, "admin", "root")
    assert ControlAction.objects.filter(action="consent", via="admin").count() == 1
    page = client.get(f"/admin/consent/consent/{consent.pk}/change/").content.decode()
    assert "Opted out" in page and "Admin" in page


# --- CSV ------------------------------------------------------------------------------------


def test_import_opt_outs_reports_bad_rows_and_opts_out_the_rest(tmp_path):
    consent_set(phone_number="+12125550124", status=OPTED_OUT, method="api", via="api")
    path = tmp_path / "list.csv"
    path.write_text("name,phone_number\nA,+1 212 555 0123\nB,+12125550124\nC,not a number\nD,+12125550125\n")
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="1 row"):
        call_command("import_opt_outs", str(path), stdout=out, stderr=err)
    assert "Opted out 2 number(s); 1 already opted out; 1 row(s) rejected." in out.getvalue()
    assert "line 4:" in err.getvalue()
    assert numbers_opted_out(phone_numbers=[NUMBER, "+12125550124", "+12125550125"]) == {
        NUMBER,
        "+12125550124",
        "+12125550125",
    }
    assert set(ConsentChange.objects.filter(method="csv_import").values_list("phone_number", flat=True)) == {
        NUMBER,
        "+12125550125",
    }


def test_import_of_a_file_without_the_column_stores_nothing(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("number\n+12125550123\n")
    with pytest.raises(CommandError, match="lacks phone_number"):
        call_command("import_opt_outs", str(path))
    assert not Consent.objects.exists()


def test_export_then_import_round_trips(tmp_path):
    consent_set(phone_number=NUMBER, status=OPTED_OUT, method="api", via="api", note="=HYPERLINK(1)")
    consent_set(phone_number="+12125550124", status=OPTED_IN, method="api", via="api")
    path = tmp_path / "out.csv"
    call_command("export_consents", "--output", str(path))
    lines = path.read_text().splitlines()
    assert lines[0] == "phone_number,status,changed_at,method,changed_by,note"
    assert len(lines) == 2 and lines[1].startswith(f"{NUMBER},opted_out,") and "'=HYPERLINK" in lines[1]
    Consent.objects.all().delete()
    call_command("import_opt_outs", str(path), stdout=io.StringIO())
    assert numbers_opted_out(phone_numbers=[NUMBER, "+12125550124"]) == {NUMBER}


def test_a_first_record_that_opts_in_is_written_with_its_history():
    # A number nobody had recorded, opted in (e.g. consent collected on a web form).
    assert consent_set(phone_number=NUMBER, status=OPTED_IN, method=Consent.Method.API, via="api").changed
    assert list(ConsentChange.objects.values_list("status", flat=True)) == [OPTED_IN]
    assert Consent.objects.get().changed_by != ""
