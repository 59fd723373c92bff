"""The worklist streams (``cobalt due`` writes its rows as they arrive) and pages (the
web's worklist), with the same rows and the same output as a list of them all."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import redirect_stdout
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from scheduler import cli, service
from scheduler.clinic_calendar import ClinicCalendar
from scheduler.db import make_engine, transaction
from scheduler.web import pages
from scheduler.worklist import group_overdue

START = date(2026, 3, 2)
ON = date(2026, 3, 20)  # the loading doses of March are overdue: a group a patient


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    ctx = service.Context(ClinicCalendar(), START, "test")
    with transaction(engine) as session:
        for n in range(12):
            service.enroll(session, ctx, mrn=f"W{n:03d}", name=f"Patient {n}", email=f"w{n}@example.org",
                           start=START + timedelta(days=n % 4), neuro=n % 3 == 0,
                           platelets=30 if n % 5 == 0 else None)
    yield engine
    engine.dispose()


def items(engine: Engine, until: date, **page: Any) -> list[dict[str, Any]]:
    with transaction(engine) as session:
        return list(service.worklist_items(session, on=ON, until=until, **page))


def reference_text(data: list[dict[str, Any]], until: date) -> str:
    """``due``'s text as it was made from the list of all rows."""
    if not data:
        return f"nothing due on or before {until.isoformat()}\n"
    rows = [[line["due"], "OVERDUE" if line["overdue"] else "due", line["mrn"], line["name"], line["what"],
             line["because"] if line["count"] == 1 else ""] for line in group_overdue(data)]
    out = [cli._table(rows, ["due", "", "mrn", "name", "what", "because"])]
    alerted: dict[str, Any] = {}
    for item in data:
        if item["alerts"] and item["mrn"] not in alerted:
            alerted[item["mrn"]] = item
    if alerted:
        out += ["", "Open alerts"]
        for mrn, item in alerted.items():
            codes = ", ".join(f"{a['code']} ({a['severity']})" for a in item["alerts"])
            out.append(f"  {mrn} {item['name']}: {codes}")
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("days", [0, 7])
def test_due_writes_the_same_json_and_text_as_the_whole_list_would(engine: Engine, days: int) -> None:
    until = ON + timedelta(days=days)
    data = items(engine, until)
    assert any(i["overdue"] for i in data) and any(i["alerts"] for i in data)
    assert len(group_overdue(data)) < len(data)  # some overdue events are grouped
    with transaction(engine) as session, redirect_stdout(io.StringIO()) as out:
        cli._due_json(service.worklist_items(session, on=ON, until=until))
    assert out.getvalue() == json.dumps(data, indent=2, default=str) + "\n"
    with transaction(engine) as session, redirect_stdout(io.StringIO()) as out:
        cli._due_text(lambda: service.worklist_items(session, on=ON, until=until), until)
    assert out.getvalue() == reference_text(data, until)


def test_an_empty_worklist_is_an_empty_json_list_and_one_line(engine: Engine) -> None:
    until = START - timedelta(days=1)
    with transaction(engine) as session, redirect_stdout(io.StringIO()) as out:
        cli._due_json(service.worklist_items(session, on=until, until=until))
        cli._due_text(lambda: service.worklist_items(session, on=until, until=until), until)
    assert out.getvalue() == "[]\n" + reference_text([], until)


def test_the_worklist_read_a_page_at_a_time_is_the_whole_worklist(engine: Engine) -> None:
    until = ON + timedelta(days=7)
    whole = items(engine, until)
    pages_read: list[dict[str, Any]] = []
    after = None
    while page := items(engine, until, after=after, limit=7):
        pages_read += page
        last = page[-1]
        after = (date.fromisoformat(last["due"]), last["mrn"], last["kind"], last["seq"], last["id"])
    assert pages_read == whole
    with transaction(engine) as session:
        assert service.worklist_count(session, until) == len(whole)
        assert service.worklist_count(session, until, after=pages.parse_page_key(pages.page_key(whole[9]))) \
            == len(whole) - 10


def test_the_web_worklist_shows_a_page_and_says_how_many_more(engine: Engine) -> None:
    with transaction(engine) as session:
        first = pages.worklist(session, ON, 7, page=10)
        total = service.worklist_count(session, ON + timedelta(days=7))
        assert first.next_after is not None and first.more == total - 10
        second = pages.worklist(session, ON, 7, first.next_after, page=10)
        assert second.after == first.next_after and second.more == total - 20
        whole = pages.worklist(session, ON, 7, page=10_000)
    assert whole.next_after is None and whole.more == 0
    assert sum(len(row.items) for row in first.overdue + first.today + first.coming) <= 10
