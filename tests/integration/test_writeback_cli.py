"""`prm ticket`, `prm outreach` and `prm outbox` as IT runs them against the live app's database."""

from __future__ import annotations

import json

from tests.integration.conftest import LiveApp


def test_open_a_ticket_record_a_message_and_watch_the_outbox(live_app: LiveApp) -> None:
    opened = live_app.prm("ticket", "open", "--connection", "sandbox", "--patient", "pat-000042",
                          "--reason", "recall-call", "--description", "Phone about the overdue hygiene recall",
                          "--priority", "urgent", "--key", "cli/ticket-1")
    assert opened.returncode == 0, opened.stderr
    ticket = json.loads(opened.stdout)
    assert ticket["created"] and ticket["status"] == "open" and ticket["priority"] == "urgent"
    again = json.loads(live_app.prm("ticket", "open", "--connection", "sandbox", "--patient", "pat-000042",
                                    "--reason", "recall-call", "--description", "Phone about the recall",
                                    "--key", "cli/ticket-1").stdout)
    assert again["id"] == ticket["id"] and not again["created"]

    recorded = live_app.prm("outreach", "record", "--connection", "sandbox", "--patient", "pat-000042",
                            "--channel", "sms", "--purpose", "recall", "--status", "failed",
                            "--status-reason", "invalid-phone-number", "--text", "Time for your check-up",
                            "--key", "cli/msg-1")
    assert recorded.returncode == 0, recorded.stderr
    assert json.loads(recorded.stdout)["status"] == "failed"

    listed = json.loads(live_app.prm("ticket", "list", "--connection", "sandbox", "--patient", "pat-000042").stdout)
    assert [t["id"] for t in listed] == [ticket["id"]]
    rows = {r["key"]: r for r in json.loads(live_app.prm("outbox", "list", "--connection", "sandbox").stdout)}
    assert rows["cli/ticket-1"]["type"] == "Task" and rows["cli/msg-1"]["type"] == "Communication"

    moved = live_app.prm("ticket", "status", str(ticket["id"]), "done")
    assert moved.returncode == 0 and json.loads(moved.stdout)["status"] == "done"
    assert json.loads(live_app.prm("ticket", "list", "--connection", "sandbox", "--patient", "pat-000042").stdout) == []


def test_bad_input_gets_one_clear_line(live_app: LiveApp) -> None:
    bad_patient = live_app.prm("ticket", "open", "--connection", "sandbox", "--patient", "pat 42",
                               "--reason", "other", "--description", "x")
    assert bad_patient.returncode == 2 and "FHIR id" in bad_patient.stderr and "Traceback" not in bad_patient.stderr
    no_reason = live_app.prm("outreach", "record", "--connection", "sandbox", "--patient", "pat-000042",
                             "--channel", "sms", "--purpose", "reminder", "--status", "failed", "--text", "Hi")
    assert no_reason.returncode == 2 and "reason it was not sent" in no_reason.stderr
    missing = live_app.prm("outbox", "retry", "999999")
    assert missing.returncode == 2 and "no outbox row 999999" in missing.stderr
    unknown = live_app.prm("ticket", "open", "--connection", "nowhere", "--patient", "pat-000042",
                           "--reason", "other", "--description", "x")
    assert unknown.returncode == 2 and "no connection named 'nowhere'" in unknown.stderr
