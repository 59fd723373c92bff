"""The worklist as a nurse reads it: pure, no database, no clock.

``group_overdue`` turns the worklist's rows (``service.worklist_items``, or the
digest's items) into lines: a patient's overdue events of one kind and phase
become one line ("3 maintenance doses overdue since 2027-04-15") instead of one
line each; everything else stays a line of its own. ``what`` says what to do in
a nurse's words: the drug and amount of a dose, the tests of a lab order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any


def _day(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def what(item: Mapping[str, Any]) -> str:
    """"hydroxocobalamin 1 mg (loading dose 2)", "lab 2-week: cbc, ldh, bilirubin", "review neuro-review"."""
    kind = item["kind"]
    if kind == "dose":
        drug = " ".join(str(v) for v in (item.get("drug"), item.get("amount")) if v)
        name = f"{item['label']} dose {item['seq']}"
        return f"{drug} ({name})" if drug else name
    if kind == "lab":
        tests = item.get("tests") or []
        return f"lab {item['label']}: {', '.join(tests)}" if tests else f"lab {item['label']}"
    return f"{kind} {item['label']}"


def _summary(events: Sequence[Mapping[str, Any]]) -> str:
    labels = list(dict.fromkeys(str(e["label"]) for e in events)) if events[0]["kind"] == "lab" else []
    return overdue_summary(events[0], len(events), labels)


def overdue_summary(first: Mapping[str, Any], count: int, labels: Sequence[str]) -> str:
    """A group's line from its first item, its size and (lab orders) its labels in order:
    "3 maintenance doses overdue since 2027-04-15 (hydroxocobalamin 1 mg)"."""
    kind, since = first["kind"], _day(first["due"])
    if kind == "dose":
        drug = " ".join(str(v) for v in (first.get("drug"), first.get("amount")) if v)
        return f"{count} {first['phase']} doses overdue since {since}" + (f" ({drug})" if drug else "")
    if kind == "lab":
        return f"{count} lab orders overdue since {since} ({', '.join(labels)})"
    return f"{count} {kind}s overdue since {since}"


def group_overdue(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One line per patient's overdue events of one kind and phase; other items one each.

    Items are in due-date order and carry ``mrn``, ``kind``, ``phase``, ``due`` and
    ``overdue``. Each line is the first item's fields plus ``count``, ``events`` (the
    items it stands for), ``since`` (the earliest due date) and ``what``: for a
    group, e.g. "3 maintenance doses overdue since 2027-04-15"; else ``what(item)``.
    Lines keep the order of their first item.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    order: list[tuple[Any, ...]] = []
    for n, item in enumerate(items):
        key: tuple[Any, ...] = (
            ("overdue", item["mrn"], item["kind"], item["phase"]) if item.get("overdue") else ("one", n)
        )
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(item)
    lines = []
    for key in order:
        events = groups[key]
        first = events[0]
        line = dict(first)
        line.update(count=len(events), events=list(events), since=first["due"],
                    what=_summary(events) if len(events) > 1 else what(first))
        lines.append(line)
    return lines
