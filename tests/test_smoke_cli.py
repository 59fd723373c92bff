def test_enrolled_patient_has_a_schedule(clinic):
    assert clinic.cobalt("enroll", "--mrn", "A1", "--name", "Ann", "--start", "2026-03-02").code == 0
    data = clinic.cobalt("schedule", "A1", "--json").json()
    assert data["patient"]["protocol"] == "hydroxo"
    assert data["events"][0]["due"] == "2026-03-02"
