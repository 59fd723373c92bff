"""Safety alerts on patients (SPEC section 5): stored, listed and acknowledged."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session


def alerts_json(record: Any) -> list[dict[str, Any]]:
    return []


def open_alerts_by_patient(session: Session, patient_ids: set[int]) -> dict[int, list[dict[str, Any]]]:
    return {}
