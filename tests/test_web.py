"""The web app through FastAPI's TestClient, on SQLite and PostgreSQL: every page,
every action and every refusal, checked in the database."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time
from sqlalchemy import Engine
from sqlmodel import Session, select

from models import Alert, Audit, Decision, Dose, LabResult, Patient, User
from scheduler import db
from scheduler.web import create_app
from tests.web_helpers import PASSWORD, XSS_NAME, csrf_of, populate, web_settings

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)  # 10:30 in Berlin, Monday 2 March


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(engine: Engine, database_url: str, tmp_path: Path, clock: Clock) -> Any:
    settings = web_settings(database_url, tmp_path)
    populate(engine, settings)
    return create_app(settings, engine, clock=clock)


def client(app: Any, https: bool = False) -> TestClient:
    return TestClient(app, base_url="https://testserver" if https else "http://testserver", follow_redirects=False)


def signed_in(app: Any, name: str, https: bool = False) -> TestClient:
    c = client(app, https)
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"csrf_token": token, "username": name, "password": PASSWORD})
    assert r.status_code == 303 and r.headers["location"] == "/"
    return c


def post(c: TestClient, page: str, path: str, **data: str) -> Any:
    """Post a form as the page's own form would: with the page's CSRF token."""
    token = csrf_of(c.get(page).text)
    return c.post(path, data={"csrf_token": token, **data})


def one(engine: Engine, query: Any) -> Any:
    with Session(engine) as s:
        return s.exec(query).all()


# -- health and signing in ---------------------------------------------------------


def test_healthz_answers_ok_and_the_schema_revision_without_a_login(app: Any) -> None:
    r = client(app).get("/healthz")
    assert r.status_code == 200
    assert r.text.strip() == f"ok {db.head_revision()}"


@pytest.mark.parametrize("path", ["/", "/patients", "/patients/new", "/patients/MRN-TODAY", "/outbox", "/audit"])
def test_every_page_sends_a_visitor_who_is_not_signed_in_to_the_login_page(app: Any, path: str) -> None:
    r = client(app).get(path)
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_a_change_posted_without_signing_in_goes_to_the_login_page_and_changes_nothing(
        app: Any, engine: Engine) -> None:
    c = client(app)
    token = csrf_of(c.get("/login").text)
    r = c.post("/patients/MRN-TODAY/dose", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert one(engine, select(Dose)) == []


def test_the_login_page_has_username_password_and_sign_in(app: Any) -> None:
    html = client(app).get("/login").text
    assert '<label for="username">Username</label>' in html
    assert '<label for="password">Password</label>' in html
    assert ">Sign in</button>" in html


def test_a_wrong_password_is_refused_with_one_message_that_names_neither(app: Any) -> None:
    c = client(app)
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"csrf_token": token, "username": "nina", "password": "wrong"})
    assert r.status_code == 401 and "Wrong username or password." in r.text
    r = c.post("/login", data={"csrf_token": token, "username": "nobody", "password": "wrong"})
    assert r.status_code == 401 and "Wrong username or password." in r.text
    assert c.get("/").status_code == 303


def test_a_sign_in_without_the_forms_token_is_refused(app: Any) -> None:
    r = client(app).post("/login", data={"username": "nina", "password": PASSWORD})
    assert r.status_code == 403


def test_the_session_cookie_is_httponly_and_samesite_lax_and_secure_only_over_tls(app: Any) -> None:
    c = client(app)
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"csrf_token": token, "username": "nina", "password": PASSWORD})
    cookie = r.headers["set-cookie"].lower()
    assert "cobalt_session=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie
    c = client(app, https=True)
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"csrf_token": token, "username": "nina", "password": PASSWORD})
    assert "; secure" in r.headers["set-cookie"].lower()


def test_five_wrong_passwords_in_a_row_lock_the_name_for_fifteen_minutes(app: Any, clock: Clock) -> None:
    c = client(app)
    token = csrf_of(c.get("/login").text)
    for _ in range(5):
        c.post("/login", data={"csrf_token": token, "username": "nina", "password": "wrong"})
    r = c.post("/login", data={"csrf_token": token, "username": "nina", "password": PASSWORD})
    assert r.status_code == 401 and "locked for 15 minutes" in r.text
    clock.now += timedelta(minutes=14)
    r = c.post("/login", data={"csrf_token": token, "username": "nina", "password": PASSWORD})
    assert r.status_code == 401
    clock.now += timedelta(minutes=2)
    r = c.post("/login", data={"csrf_token": token, "username": "nina", "password": PASSWORD})
    assert r.status_code == 303


def test_a_right_password_starts_the_count_of_wrong_ones_again(app: Any) -> None:
    c = client(app)
    token = csrf_of(c.get("/login").text)
    for _ in range(4):
        c.post("/login", data={"csrf_token": token, "username": "nina", "password": "wrong"})
    assert c.post("/login", data={"csrf_token": token, "username": "nina", "password": PASSWORD}).status_code == 303
    token = csrf_of(c.get("/").text)
    for _ in range(4):
        c.post("/login", data={"csrf_token": token, "username": "nina", "password": "wrong"})
    assert c.post("/login", data={"csrf_token": token, "username": "nina", "password": PASSWORD}).status_code == 303


def test_a_session_ends_after_twelve_hours_without_a_request(engine: Engine, database_url: str,
                                                              tmp_path: Path) -> None:
    settings = web_settings(database_url, tmp_path)
    populate(engine, settings)
    with freeze_time("2026-03-02 08:00:00") as frozen:
        app = create_app(settings, engine)
        c = signed_in(app, "nina")
        frozen.tick(timedelta(hours=11))
        assert c.get("/").status_code == 200  # a request: the twelve hours start again
        frozen.tick(timedelta(hours=11, minutes=59))
        assert c.get("/").status_code == 200
        frozen.tick(timedelta(hours=12, minutes=1))
        r = c.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/login"


def test_a_disabled_user_is_signed_out_at_the_next_request(app: Any, engine: Engine) -> None:
    c = signed_in(app, "nina")
    with db.transaction(engine) as s:
        from scheduler.users import disable_user

        disable_user(s, "ada", "nina")
    assert c.get("/").status_code == 303
    token = csrf_of(c.get("/login").text)
    assert c.post("/login", data={"csrf_token": token, "username": "nina", "password": PASSWORD}).status_code == 401


def test_sign_out_ends_the_session(app: Any) -> None:
    c = signed_in(app, "nina")
    r = post(c, "/", "/logout")
    assert r.status_code == 303
    assert c.get("/").status_code == 303


# -- the worklist ------------------------------------------------------------------


def test_the_worklist_shows_overdue_due_today_and_coming_up_with_what_why_and_alerts(app: Any) -> None:
    html = signed_in(app, "nina").get("/").text
    overdue, rest = html.split('id="today-heading"')
    today, coming = rest.split('id="coming-heading"')
    assert "Olive Overdue" in overdue and 'href="/patients/MRN-OVERDUE"' in overdue
    assert "hydroxocobalamin 1 mg (loading dose 1)" in overdue
    assert "lab baseline: b12" in overdue
    assert "first dose, on the start date" in overdue  # why
    assert "platelets-low" in overdue
    assert "25-27G needle" in overdue  # the technique note for the latest platelet count
    assert "Tom Today" in today and "platelets-critical" in today
    assert "consider platelet transfusion" in today
    assert "Mon 2 Mar 2026" in html  # dates as people read them
    assert "&lt;script&gt;alert(1)&lt;/script&gt;{{7*7}}" in coming


def test_the_worklist_groups_a_patients_overdue_events_in_one_row(app: Any) -> None:
    html = signed_in(app, "nina").get("/").text
    overdue = html.split('id="today-heading"')[0]
    assert overdue.count('href="/patients/MRN-OVERDUE"') == 1
    assert overdue.count('class="item ') > 1


def test_the_worklist_lists_urgent_alerts_first(app: Any, engine: Engine, clock: Clock) -> None:
    c = signed_in(app, "nina")
    r = post(c, "/patients/MRN-OVERDUE", "/patients/MRN-OVERDUE/results", result_hb="4.5", result_platelets="30")
    assert r.status_code == 303
    overdue = c.get("/").text.split('id="today-heading"')[0]
    assert overdue.index("hb-critical") < overdue.index("platelets-low")


def test_the_worklist_date_and_days_ahead_choose_the_window(app: Any) -> None:
    c = signed_in(app, "nina")
    html = c.get("/", params={"on": "2026-03-04", "days": "0"}).text
    today = html.split('id="today-heading"')[1].split('id="coming-heading"')[0]
    assert XSS_NAME.replace("<", "&lt;").replace(">", "&gt;") in today
    assert '<label for="on">Date</label>' in html and '<label for="days">Days ahead</label>' in html
    r = c.get("/", params={"on": "4 March", "days": "0"})
    assert r.status_code == 422 and "is not a date (YYYY-MM-DD)" in r.text


def test_a_long_worklist_is_paged_with_how_many_more_and_a_next_page(app: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from scheduler.web import pages

    c = signed_in(app, "nina")
    whole = c.get("/").text
    assert "Next page" not in whole  # a short list is one page
    monkeypatch.setattr(pages, "WORKLIST_PAGE", 2)
    html = c.get("/").text
    assert 'id="overdue-heading"' in html and 'id="today-heading"' in html and 'id="coming-heading"' in html
    assert "more events after this page" in html and 'rel="next"' in html
    link = html.split('rel="next" href="')[1].split('"')[0].replace("&amp;", "&")
    second = c.get(link)
    assert second.status_code == 200 and "First page" in second.text
    assert c.get("/", params={"after": "not a place"}).status_code == 200  # an odd link starts at the top


# -- patients ----------------------------------------------------------------------


def test_the_patient_list_finds_patients_by_name_or_mrn(app: Any) -> None:
    c = signed_in(app, "nina")
    html = c.get("/patients", params={"q": "olive"}).text
    assert "Olive Overdue" in html and "Tom Today" not in html
    html = c.get("/patients", params={"q": "MRN-TODAY"}).text
    assert "Tom Today" in html and "Olive Overdue" not in html


def test_a_nurse_enrols_a_patient_and_lands_on_the_patient_page(app: Any, engine: Engine) -> None:
    c = signed_in(app, "nina")
    html = c.get("/patients/new").text
    for label in ("MRN", "Name", "Email", "Phone", "Protocol", "Start"):
        assert f">{label}</label>" in html
    assert ">Enrol</button>" in html
    r = post(c, "/patients/new", "/patients/new", mrn="MRN-NEW", name="Nora New", email="nora@example.org",
             phone="+44 20 7946 0000", protocol="cyano", start="2026-03-02")
    assert r.status_code == 303 and r.headers["location"] == "/patients/MRN-NEW"
    assert "Nora New" in c.get("/patients/MRN-NEW").text
    (patient,) = one(engine, select(Patient).where(Patient.mrn == "MRN-NEW"))
    assert patient.phone == "+44 20 7946 0000"
    (entry,) = one(engine, select(Audit).where(Audit.action == "enroll", Audit.patient_id == patient.id))
    assert entry.actor == "nina"


def test_bad_input_on_enrolment_shows_the_clis_message_and_changes_nothing(app: Any, engine: Engine) -> None:
    c = signed_in(app, "nina")
    r = post(c, "/patients/new", "/patients/new", mrn="MRN-TODAY", name="Twin", start="2026-03-02")
    assert r.status_code == 422
    assert "a patient with MRN &#39;MRN-TODAY&#39; is already enrolled" in r.text
    assert 'value="Twin"' in r.text  # the form keeps what was typed
    r = post(c, "/patients/new", "/patients/new", mrn="MRN-2", name="Bad Mail", email="nope")
    assert r.status_code == 422 and "--email &#39;nope&#39; is not an email address" in r.text
    assert len(one(engine, select(Patient))) == 3


def test_the_patient_page_shows_details_alerts_timeline_and_the_nurses_forms(app: Any) -> None:
    html = signed_in(app, "nina").get("/patients/MRN-TODAY").text
    assert "Tom Today" in html and "tom@example.org" in html
    assert "platelets-critical" in html
    assert "at the treatment start" in html  # a because
    for button in ("Record dose", "Record results", "Move"):
        assert f">{button}</button>" in html
    assert ">Discharge</button>" not in html and ">End loading</button>" not in html
    assert ">Acknowledge</button>" not in html  # the only alert is urgent: a clinician's


def test_an_unknown_patient_is_not_found(app: Any) -> None:
    r = signed_in(app, "nina").get("/patients/NOPE")
    assert r.status_code == 404 and "no patient with MRN" in r.text


def test_a_nurse_records_a_dose_audited_under_her_name(app: Any, engine: Engine) -> None:
    c = signed_in(app, "nina")
    r = post(c, "/patients/MRN-TODAY", "/patients/MRN-TODAY/dose", given_on="2026-03-02")
    assert r.status_code == 303
    (dose,) = one(engine, select(Dose))
    assert dose.given_on.isoformat() == "2026-03-02" and dose.recorded_by == "nina"
    assert [a.actor for a in one(engine, select(Audit).where(Audit.action == "give"))] == ["nina"]


def test_a_dose_in_the_future_shows_the_clis_message_and_changes_nothing(app: Any, engine: Engine) -> None:
    c = signed_in(app, "nina")
    r = post(c, "/patients/MRN-TODAY", "/patients/MRN-TODAY/dose", given_on="2026-03-09")
    assert r.status_code == 422
    assert "a dose on 2026-03-09 is in the future (today is 2026-03-02)" in r.text
    r = post(c, "/patients/MRN-TODAY", "/patients/MRN-TODAY/dose", given_on="tomorrow")
    assert r.status_code == 422 and "is not a date" in r.text
    assert one(engine, select(Dose)) == []


def test_a_nurse_records_results_and_sees_them_per_code_with_dates(app: Any, engine: Engine,
                                                                     clock: Clock) -> None:
    c = signed_in(app, "nina")
    r = post(c, "/patients/MRN-OVERDUE", "/patients/MRN-OVERDUE/results", result_hb="8.1", result_b12="90",
             taken_on="2026-02-27")
    assert r.status_code == 303
    r = post(c, "/patients/MRN-OVERDUE", "/patients/MRN-OVERDUE/results", result_hb="9.4")
    assert r.status_code == 303
    rows = one(engine, select(LabResult).where(LabResult.code == "hb", LabResult.recorded_by == "nina"))
    assert sorted(r.value for r in rows) == [8.1, 9.4]
    html = c.get("/patients/MRN-OVERDUE").text
    hb = html.split('aria-label="hb results"')[1].split("</table>")[0]
    assert hb.index("Fri 27 Feb 2026") < hb.index("Mon 2 Mar 2026")
    assert hb.index("8.1") < hb.index("9.4")


def test_an_implausible_result_shows_the_clis_message_and_changes_nothing(app: Any, engine: Engine) -> None:
    c = signed_in(app, "nina")
    r = post(c, "/patients/MRN-OVERDUE", "/patients/MRN-OVERDUE/results", result_hb="95")
    assert r.status_code == 422 and "hb" in r.text and 'role="alert"' in r.text
    r = post(c, "/patients/MRN-OVERDUE", "/patients/MRN-OVERDUE/results")
    assert r.status_code == 422 and "give at least one --result CODE=VALUE" in r.text
    assert one(engine, select(LabResult).where(LabResult.recorded_by == "nina")) == []


def test_a_nurse_moves_a_planned_event(app: Any, engine: Engine) -> None:
    from models import Event

    c = signed_in(app, "nina")
    (event,) = one(engine, select(Event).join(Patient).where(Patient.mrn == "MRN-TODAY", Event.kind == "dose",
                                                             Event.phase == "loading", Event.seq == 1))
    r = post(c, "/patients/MRN-TODAY", "/patients/MRN-TODAY/move", event=str(event.id), to="2026-03-03",
             reason="patient asked")
    assert r.status_code == 303
    with Session(engine) as s:
        assert s.get(Event, event.id).due.isoformat() == "2026-03-03"  # type: ignore[union-attr]


def test_a_nurse_acknowledges_an_info_alert_but_not_an_urgent_one(app: Any, engine: Engine) -> None:
    c = signed_in(app, "nina")
    html = c.get("/patients/MRN-OVERDUE").text
    assert ">Acknowledge</button>" in html
    r = post(c, "/patients/MRN-OVERDUE", "/patients/MRN-OVERDUE/acknowledge", code="platelets-low")
    assert r.status_code == 303
    (row,) = one(engine, select(Alert).where(Alert.code == "platelets-low"))
    assert row.status == "acknowledged" and row.closed_by == "nina"
    r = post(c, "/patients/MRN-TODAY", "/patients/MRN-TODAY/acknowledge", code="platelets-critical")
    assert r.status_code == 403
    (row,) = one(engine, select(Alert).where(Alert.code == "platelets-critical"))
    assert row.status == "open"


def test_a_clinician_acknowledges_an_urgent_alert(app: Any, engine: Engine) -> None:
    c = signed_in(app, "carl")
    r = post(c, "/patients/MRN-TODAY", "/patients/MRN-TODAY/acknowledge", code="platelets-critical")
    assert r.status_code == 303
    (row,) = one(engine, select(Alert).where(Alert.code == "platelets-critical"))
    assert row.status == "acknowledged" and row.closed_by == "carl"


def test_acknowledging_an_alert_that_is_not_open_shows_the_clis_message(app: Any) -> None:
    r = post(signed_in(app, "carl"), "/patients/MRN-TODAY", "/patients/MRN-TODAY/acknowledge", code="folic-acid")
    assert r.status_code == 422 and "no open alert &#39;folic-acid&#39; for MRN-TODAY" in r.text


# -- refusals: CSRF and roles ------------------------------------------------------


@pytest.mark.parametrize("token", [None, "forged"])
def test_a_change_without_a_valid_csrf_token_is_refused_with_403_and_changes_nothing(
        app: Any, engine: Engine, token: str | None) -> None:
    c = signed_in(app, "nina")
    data = {"given_on": "2026-03-02"} | ({"csrf_token": token} if token else {})
    r = c.post("/patients/MRN-TODAY/dose", data=data)
    assert r.status_code == 403
    assert one(engine, select(Dose)) == []


def test_a_token_from_another_session_is_refused(app: Any, engine: Engine) -> None:
    other = csrf_of(signed_in(app, "carl").get("/").text)
    r = signed_in(app, "nina").post("/patients/MRN-TODAY/dose", data={"csrf_token": other})
    assert r.status_code == 403
    assert one(engine, select(Dose)) == []


@pytest.mark.parametrize("path,data", [
    ("/patients/MRN-OVERDUE/end-loading", {}),
    ("/patients/MRN-OVERDUE/review", {}),
    ("/patients/MRN-TODAY/confirm-response", {}),
    ("/patients/MRN-TODAY/discharge", {"reason": "moved away"}),
    ("/patients/MRN-TODAY/switch", {"protocol": "hydroxo-neuro"}),
    ("/patients/MRN-TODAY/void", {"event": "1", "reason": "typo"}),
])
def test_a_nurse_may_not_make_a_clinicians_decision_even_without_the_button(
        app: Any, engine: Engine, path: str, data: dict[str, str]) -> None:
    r = post(signed_in(app, "nina"), "/", path, **data)
    assert r.status_code == 403
    assert one(engine, select(Decision)) == []
    assert {p.status for p in one(engine, select(Patient))} == {"active"}


@pytest.mark.parametrize("path,data", [
    ("/patients/MRN-TODAY/dose", {}),
    ("/patients/MRN-TODAY/results", {"result_hb": "12"}),
    ("/patients/new", {"mrn": "MRN-ADMIN", "name": "By Admin"}),
    ("/patients/MRN-TODAY/discharge", {"reason": "moved away"}),
])
def test_an_admin_manages_users_and_records_no_care(app: Any, engine: Engine, path: str,
                                                     data: dict[str, str]) -> None:
    r = post(signed_in(app, "ada"), "/", path, **data)
    assert r.status_code == 403
    assert one(engine, select(Dose)) == [] and len(one(engine, select(Patient))) == 3
    assert one(engine, select(LabResult).where(LabResult.recorded_by == "ada")) == []


def test_a_clinician_sees_the_decisions_and_discharges_with_a_reason(app: Any, engine: Engine) -> None:
    c = signed_in(app, "carl")
    html = c.get("/patients/MRN-OVERDUE").text
    for button in ("End loading", "Discharge"):
        assert f">{button}</button>" in html
    assert '<label for="reason">Reason</label>' in html
    r = post(c, "/patients/MRN-OVERDUE", "/patients/MRN-OVERDUE/discharge", reason="", on="2026-03-02")
    assert r.status_code == 422 and "--reason must not be empty" in r.text
    r = post(c, "/patients/MRN-OVERDUE", "/patients/MRN-OVERDUE/discharge", reason="moved away", on="2026-03-02")
    assert r.status_code == 303
    (patient,) = one(engine, select(Patient).where(Patient.mrn == "MRN-OVERDUE"))
    assert patient.status == "discharged" and patient.discharge_reason == "moved away"
    assert [a.actor for a in one(engine, select(Audit).where(Audit.action == "discharge"))] == ["carl"]


def test_a_clinician_ends_loading_and_confirms_a_response(app: Any, engine: Engine) -> None:
    c = signed_in(app, "carl")
    r = post(c, "/patients/MRN-OVERDUE", "/patients/MRN-OVERDUE/end-loading", on="2026-03-02")
    assert r.status_code == 422 and "end-loading" in r.text  # not before a dose is given
    assert post(c, "/patients/MRN-OVERDUE", "/patients/MRN-OVERDUE/dose", given_on="2026-03-02").status_code == 303
    assert post(c, "/patients/MRN-OVERDUE", "/patients/MRN-OVERDUE/end-loading", on="2026-03-02").status_code == 303
    r = post(c, "/patients/MRN-TODAY", "/patients/MRN-TODAY/confirm-response", on="2026-03-02")
    assert r.status_code == 422 and "confirm-response applies to cyano only" in r.text
    r = post(c, "/patients/MRN-OVERDUE", "/patients/MRN-OVERDUE/review", on="2026-03-02")
    assert r.status_code == 422 and "loading has ended" in r.text
    decisions = one(engine, select(Decision))
    assert [(d.kind, d.recorded_by) for d in decisions] == [("end-loading", "carl")]


def test_a_clinician_switches_a_protocol(app: Any, engine: Engine) -> None:
    c = signed_in(app, "carl")
    r = post(c, "/patients/MRN-TODAY", "/patients/MRN-TODAY/switch", protocol="hydroxo-neuro", on="2026-03-02")
    assert r.status_code == 303
    assert "hydroxo-neuro" in c.get("/patients/MRN-TODAY").text


# -- the admin's pages -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/outbox", "/audit"])
def test_the_outbox_and_audit_pages_are_the_admins(app: Any, path: str) -> None:
    assert signed_in(app, "nina").get(path).status_code == 403
    assert signed_in(app, "carl").get(path).status_code == 403
    assert signed_in(app, "ada").get(path).status_code == 200


def test_the_audit_page_names_who_made_each_change(app: Any) -> None:
    post(signed_in(app, "nina"), "/patients/MRN-TODAY", "/patients/MRN-TODAY/dose")
    html = signed_in(app, "ada").get("/audit").text
    assert "<td>nina</td><td>give</td><td>MRN-TODAY</td>" in html


def test_the_outbox_page_lists_queued_messages(app: Any, engine: Engine, database_url: str,
                                               tmp_path: Path) -> None:
    from scheduler.passes import run_pass

    run_pass(engine, web_settings(database_url, tmp_path), NOW)
    html = signed_in(app, "ada").get("/outbox").text
    assert "tom@example.org" in html or "The outbox is empty." not in html


# -- security ----------------------------------------------------------------------


def test_pages_carry_the_security_headers_and_are_not_stored(app: Any) -> None:
    r = signed_in(app, "nina").get("/patients/MRN-TODAY")
    csp = r.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"
    assert "<script" not in r.text  # no scripts, inline or not


def test_the_stylesheet_ships_in_the_package(app: Any) -> None:
    r = client(app).get("/static/cobalt.css")
    assert r.status_code == 200 and "@media print" in r.text


def test_a_name_that_is_markup_shows_literally(app: Any) -> None:
    c = signed_in(app, "nina")
    for page in ("/", "/patients", "/patients/MRN-XSS"):
        html = c.get(page).text
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;{{7*7}}" in html and ">49<" not in html


def test_the_access_log_names_routes_never_mrns_or_names(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cobalt.web")
    c = signed_in(app, "nina")
    c.get("/patients/MRN-TODAY")
    c.get("/patients", params={"q": "Tom"})
    post(c, "/patients/MRN-TODAY", "/patients/MRN-TODAY/dose")
    lines = [r.getMessage() for r in caplog.records if r.name == "cobalt.web"]
    assert "GET /patients/{mrn} 200" in lines and "POST /patients/{mrn}/dose 303" in lines
    assert not any("MRN-" in line or "Tom" in line for line in lines)


# -- cobalt user ---------------------------------------------------------------------


def test_cobalt_user_adds_lists_and_disables_users(clinic: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    r = clinic.cobalt("--by", "boss", "user", "add", "nina", "--role", "nurse", "--password-stdin")
    assert r.code == 0 and r.out.strip() == "user nina added (nurse)"
    r = clinic.cobalt("user", "list", "--json")
    assert [(u["name"], u["role"], u["active"]) for u in r.json()] == [("nina", "nurse", True)]
    assert clinic.cobalt("user", "disable", "nina").code == 0
    assert "disabled" in clinic.cobalt("user", "list").out
    engine = db.make_engine(clinic.database_url)
    with Session(engine) as s:
        (user,) = s.exec(select(User)).all()
        assert user.password_hash.startswith("$argon2") and "a long password" not in user.password_hash
        actions = [(a.actor, a.action) for a in s.exec(select(Audit))]
    engine.dispose()
    assert ("boss", "user-add") in actions


@pytest.mark.parametrize("args,stdin,message", [
    (["user", "add", "x", "--role", "porter", "--password-stdin"], "a long password\n", "invalid choice"),
    (["user", "add", "x", "--role", "nurse", "--password-stdin"], "short\n", "at least 8 characters"),
    (["user", "add", "x y", "--role", "nurse", "--password-stdin"], "a long password\n", "must be 1-64 letters"),
    (["user", "disable", "ghost"], "", "no user named 'ghost'"),
])
def test_cobalt_user_refuses_bad_input_with_exit_status_2(clinic: Any, monkeypatch: pytest.MonkeyPatch,
                                                           args: list[str], stdin: str, message: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    r = clinic.cobalt(*args)
    assert r.code == 2 and message in r.err and "Traceback" not in r.err


def test_cobalt_user_refuses_a_name_taken(clinic: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\na long password\n"))
    assert clinic.cobalt("user", "add", "nina", "--role", "nurse", "--password-stdin").code == 0
    r = clinic.cobalt("user", "add", "nina", "--role", "admin", "--password-stdin")
    assert r.code == 2 and "already exists" in r.err


def test_cobalt_web_with_scheduler_runs_the_same_jobs_as_cobalt_run_in_the_background(app: Any, engine: Engine) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    from scheduler.config import Settings
    from scheduler.runner import build_scheduler

    scheduler = build_scheduler(engine, Settings(), BackgroundScheduler)
    assert isinstance(scheduler, BackgroundScheduler)
    assert sorted(job.id for job in scheduler.get_jobs()) == ["delivery", "digest", "pass"]


def test_cobalt_web_refuses_a_port_out_of_range(clinic: Any) -> None:
    r = clinic.cobalt("web", "--port", "70000")
    assert r.code == 2 and "is not a port number" in r.err


def test_a_move_to_a_closed_day_shows_the_clis_message_and_changes_nothing(app: Any, engine: Engine) -> None:
    from models import Event

    c = signed_in(app, "nina")
    (event,) = one(engine, select(Event).join(Patient).where(Patient.mrn == "MRN-TODAY", Event.kind == "dose",
                                                             Event.phase == "loading", Event.seq == 2))
    r = post(c, "/patients/MRN-TODAY", "/patients/MRN-TODAY/move", event=str(event.id), to="2026-03-07")
    assert r.status_code == 422 and "is a closed day" in r.text
    with Session(engine) as s:
        assert s.get(Event, event.id).due == event.due  # type: ignore[union-attr]


def test_a_nurse_edits_a_patients_details(app: Any, engine: Engine) -> None:
    c = signed_in(app, "nina")
    html = c.get("/patients/MRN-TODAY/edit").text
    assert 'value="tom@example.org"' in html and ">Save details</button>" in html
    r = post(c, "/patients/MRN-TODAY/edit", "/patients/MRN-TODAY/edit", name="Tom Today", email="",
             phone="020 7946 0999")
    assert r.status_code == 303
    (patient,) = one(engine, select(Patient).where(Patient.mrn == "MRN-TODAY"))
    assert patient.email is None and patient.phone == "020 7946 0999"
    assert [a.actor for a in one(engine, select(Audit).where(Audit.action == "edit"))] == ["nina"]
    r = post(c, "/patients/MRN-TODAY/edit", "/patients/MRN-TODAY/edit", name="Tom Today", email="not-mail")
    assert r.status_code == 422 and "is not an email address" in r.text


def test_a_clinician_voids_a_dose_entered_in_error_and_it_shows_as_voided(app: Any, engine: Engine) -> None:
    from models import Event

    post(signed_in(app, "nina"), "/patients/MRN-TODAY", "/patients/MRN-TODAY/dose")
    (event,) = one(engine, select(Event).join(Patient).where(Patient.mrn == "MRN-TODAY", Event.status == "done"))
    c = signed_in(app, "carl")
    r = post(c, "/patients/MRN-TODAY", "/patients/MRN-TODAY/void", event=str(event.id), reason="")
    assert r.status_code == 422 and "--reason must not be empty" in r.text
    r = post(c, "/patients/MRN-TODAY", "/patients/MRN-TODAY/void", event=str(event.id), reason="wrong patient")
    assert r.status_code == 303
    (dose,) = one(engine, select(Dose))
    assert dose.voided_at is not None and dose.voided_by == "carl"
    voided = c.get("/patients/MRN-TODAY").text.split('id="voided-heading"')[1]
    assert "wrong patient" in voided and "carl" in voided


def test_the_patient_list_shows_the_next_due_and_open_alerts(app: Any) -> None:
    html = signed_in(app, "nina").get("/patients", params={"q": "tom"}).text
    assert "Mon 2 Mar 2026" in html and "platelets-critical" in html
