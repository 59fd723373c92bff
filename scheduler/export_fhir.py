"""A patient's treatment as a FHIR R4 Bundle (type ``collection``), with ``fhir.resources``.

read (the patient's record) -> map (one resource per thing, built and validated
by ``fhir.resources``) -> serialise (JSON).

The models are ``fhir.resources.R4B``: fhir.resources 7 and later default to
R5 and ship R4B (4.3) beside it; the last release with plain R4 (6.x) needs
pydantic 1, which Cobalt's other libraries do not allow. R4B left Patient,
CarePlan, MedicationAdministration, Observation and ServiceRequest as they were
in R4 (hl7.org/fhir/R4B/r4b-explanation.html), so what is written here is valid
R4 too (docs/decisions.md, Exports).

In the bundle:

- ``Patient``: the MRN as identifier, name, telecom;
- ``CarePlan``: one activity per planned event (dose, lab order, review), with
  its status and scheduled date; a done dose's activity points at its
  MedicationAdministration, a done lab order's at its Observations;
- ``MedicationAdministration``: one per dose given (RxNorm code of the drug);
- ``ServiceRequest``: one per lab order, based on the CarePlan;
- ``Observation``: one per lab result (LOINC code where the lab code has one,
  ``docs/lab-codes.md``), based on the order it completed.

Every reference is a ``urn:uuid:`` full URL of another entry of the bundle; the
UUIDs are derived from the clinic's domain and the record's id, so they stay
the same from one export to the next.
"""

from __future__ import annotations

import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.servicerequest import ServiceRequest
from sqlmodel import Session

from scheduler import labs
from scheduler.config import Settings
from scheduler.export_ics import clinic_domain
from scheduler.protocols import get_protocol
from scheduler.store import PatientRecord, get_patient, load_record, sorted_events

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"

# Lab result code -> (LOINC code, LOINC display); docs/lab-codes.md lists them.
LOINC_CODES: dict[str, tuple[str, str]] = {
    "b12": ("14685-2", "Cobalamin (Vitamin B12) [Moles/volume] in Serum or Plasma"),
    "folate": ("14732-2", "Folate [Moles/volume] in Serum or Plasma"),
    "hb": ("718-7", "Hemoglobin [Mass/volume] in Blood"),
    "wbc": ("6690-2", "Leukocytes [#/volume] in Blood by Automated count"),
    "platelets": ("777-3", "Platelets [#/volume] in Blood by Automated count"),
    "mcv": ("787-2", "MCV [Entitic volume] by Automated count"),
    "reticulocytes": ("4679-7", "Reticulocytes/Erythrocytes in Blood"),
    "ldh": ("2532-0", "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma"),
    "bilirubin": ("14631-6", "Bilirubin.total [Moles/volume] in Serum or Plasma"),
    "homocysteine": ("13965-9", "Homocysteine [Moles/volume] in Serum or Plasma"),
    "mma": ("13964-2", "Methylmalonate [Moles/volume] in Serum or Plasma"),
    "gastrin": ("2333-3", "Gastrin [Mass/volume] in Serum or Plasma"),
    "egfr": ("98979-8", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, "
                        "Plasma or Blood by Creatinine-based formula (CKD-EPI 2021)"),
}
# Cobalt's units -> UCUM codes.
UCUM_UNITS = {
    "pmol/L": "pmol/L", "nmol/L": "nmol/L", "g/dL": "g/dL", "10^9/L": "10*9/L", "fL": "fL", "%": "%",
    "U/L": "U/L", "umol/L": "umol/L", "pg/mL": "pg/mL", "mL/min/1.73m2": "mL/min/{1.73_m2}",
}
# Qualitative results -> SNOMED CT qualifier values.
QUALITATIVE = {"positive": ("10828004", "Positive"), "negative": ("260385009", "Negative")}
# Drug -> RxNorm ingredient.
RXNORM_INGREDIENTS = {"hydroxocobalamin": ("5514", "hydroxocobalamin"), "cyanocobalamin": ("11248", "vitamin B12")}
INTRAMUSCULAR = ("78421000", "Intramuscular route")  # SNOMED CT

# CarePlan activity status and ServiceRequest status for each event status.
ACTIVITY_STATUS = {"planned": "scheduled", "done": "completed", "cancelled": "cancelled", "held": "on-hold"}
REQUEST_STATUS = {"planned": "active", "done": "completed", "cancelled": "revoked", "held": "on-hold"}
ACTIVITY_KIND = {"dose": "MedicationRequest", "lab": "ServiceRequest", "review": "Task"}


class _Ids:
    """Stable ``urn:uuid:`` URLs: the same record gives the same UUID in every export."""

    def __init__(self, domain: str) -> None:
        self.namespace = uuid.uuid5(uuid.NAMESPACE_DNS, domain)

    def url(self, kind: str, key: object) -> str:
        return f"urn:uuid:{uuid.uuid5(self.namespace, f'{kind}/{key}')}"


def _ref(url: str) -> dict[str, str]:
    return {"reference": url}


def _amount(dose: str) -> dict[str, Any]:
    """``"1 mg"`` -> a UCUM quantity."""
    value, _, unit = dose.partition(" ")
    code = {"mcg": "ug"}.get(unit, unit)
    return {"value": float(value), "unit": unit, "system": UCUM, "code": code}


def _drug(protocol: str) -> dict[str, Any]:
    p = get_protocol(protocol)
    concept: dict[str, Any] = {"text": f"{p.drug} {p.dose} {p.route}"}
    if p.drug in RXNORM_INGREDIENTS:
        code, display = RXNORM_INGREDIENTS[p.drug]
        concept["coding"] = [{"system": RXNORM, "code": code, "display": display}]
    return concept


def _lab_code(code: str) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": labs.CATALOG[code].name}
    if code in LOINC_CODES:
        loinc, display = LOINC_CODES[code]
        concept["coding"] = [{"system": LOINC, "code": loinc, "display": display}]
    return concept


def bundle(record: PatientRecord, settings: Settings) -> Bundle:
    """The patient's record as a validated R4(B) Bundle of type ``collection``."""
    ids = _Ids(clinic_domain(settings))
    p = record.patient
    patient_url = ids.url("Patient", p.id)
    careplan_url = ids.url("CarePlan", p.id)
    subject = _ref(patient_url)
    regimens = {r.number: r for r in record.regimens}
    current = regimens[max(regimens)]
    entries: list[tuple[str, Any]] = []

    telecom = [{"system": "email", "value": p.email}] if p.email else []
    telecom += [{"system": "phone", "value": p.phone}] if p.phone else []
    entries.append((patient_url, FhirPatient.model_validate({
        "resourceType": "Patient",
        "identifier": [{"use": "usual", "system": f"https://{clinic_domain(settings)}/mrn", "value": p.mrn}],
        "active": p.status == "active",
        "name": [{"text": p.name}],
        **({"telecom": telecom} if telecom else {}),
    })))

    # Doses given.
    dose_urls: dict[str, str] = {}
    for dose in sorted(record.doses, key=lambda d: d.given_on):
        url = ids.url("MedicationAdministration", dose.id)
        number = int(dose.event_key.split(":", 1)[0][1:])
        protocol = get_protocol(regimens[number].protocol)
        dose_urls[dose.event_key] = url
        entries.append((url, MedicationAdministration.model_validate({
            "resourceType": "MedicationAdministration",
            "status": "completed",
            "medicationCodeableConcept": _drug(protocol.id),
            "subject": subject,
            "effectiveDateTime": dose.given_on.isoformat(),
            "dosage": {"route": {"coding": [{"system": SNOMED, "code": INTRAMUSCULAR[0],
                                             "display": INTRAMUSCULAR[1]}]},
                       "dose": _amount(protocol.dose)},
        })))

    # Lab orders and the results that completed them.
    events = sorted_events(record.events)
    order_urls = {e.key: ids.url("ServiceRequest", e.id) for e in events if e.kind == "lab"}
    results_by_order: dict[str | None, list[str]] = {}
    observations = []
    for result in sorted(record.results, key=lambda r: (r.taken_on, r.id or 0)):
        url = ids.url("Observation", result.id)
        results_by_order.setdefault(result.order_key, []).append(url)
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory", "display": "Laboratory"}]}],
            "code": _lab_code(result.code),
            "subject": subject,
            "effectiveDateTime": result.taken_on.isoformat(),
        }
        if result.order_key in order_urls:
            observation["basedOn"] = [_ref(order_urls[result.order_key])]
        if result.text is not None:
            code, display = QUALITATIVE.get(result.text, ("", result.text))
            observation["valueCodeableConcept"] = (
                {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": result.text}
                if code else {"text": result.text}
            )
        elif result.value is not None:
            unit = result.unit or labs.CATALOG[result.code].unit or ""
            observation["valueQuantity"] = {"value": result.value, "unit": unit, "system": UCUM,
                                            "code": UCUM_UNITS.get(unit, unit)}
        observations.append((url, Observation.model_validate(observation)))

    activities = []
    for e in events:
        detail: dict[str, Any] = {
            "kind": ACTIVITY_KIND[e.kind],
            "status": ACTIVITY_STATUS[e.status],
            "scheduledPeriod": {"start": e.due.isoformat(), "end": e.due.isoformat()},
            "description": e.because,
        }
        activity: dict[str, Any] = {"detail": detail}
        if e.kind == "dose":
            number = int(e.key.split(":", 1)[0][1:])
            detail["code"] = {"text": f"{e.phase} dose {e.seq} ({e.label})"}
            detail["productCodeableConcept"] = _drug(regimens[number].protocol)
            if e.key in dose_urls and e.status == "done":
                activity["outcomeReference"] = [_ref(dose_urls[e.key])]
        elif e.kind == "lab":
            detail["code"] = {"text": f"{e.label} lab order: {e.tests.replace(' ', ', ')}"}
            done = results_by_order.get(e.key, [])
            if done:
                activity["outcomeReference"] = [_ref(url) for url in done]
        else:
            detail["code"] = {"text": f"clinician review ({e.label})"}
        activities.append(activity)

    first = min(r.start for r in record.regimens)
    careplan: dict[str, Any] = {
        "resourceType": "CarePlan",
        "status": "active" if p.status == "active" else "completed",
        "intent": "plan",
        "title": f"Vitamin B12 treatment: {current.protocol}",
        "subject": subject,
        "period": {"start": first.isoformat(), **({"end": p.discharged_on.isoformat()} if p.discharged_on else {})},
        "activity": activities,
    }
    if not activities:
        careplan.pop("activity")
    entries.append((careplan_url, CarePlan.model_validate(careplan)))

    for e in events:
        if e.kind != "lab":
            continue
        entries.append((order_urls[e.key], ServiceRequest.model_validate({
            "resourceType": "ServiceRequest",
            "status": REQUEST_STATUS[e.status],
            "intent": "order",
            "code": {"text": f"{e.label} lab order"},
            "orderDetail": [_lab_code(code) if code in labs.CATALOG else {"text": code} for code in e.tests.split()],
            "subject": subject,
            "basedOn": [_ref(careplan_url)],
            "occurrenceDateTime": e.due.isoformat(),
        })))
    entries.extend(observations)

    return Bundle.model_validate({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": url, "resource": resource} for url, resource in entries],
    })


def patient_bundle_json(session: Session, settings: Settings, mrn: str) -> str:
    record = load_record(session, get_patient(session, mrn))
    return bundle(record, settings).model_dump_json(indent=2, exclude_none=True) + "\n"
