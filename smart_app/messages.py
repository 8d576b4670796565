"""What a person sees when something goes wrong: what happened and what to do, per reason code."""

from __future__ import annotations

_LAUNCH: dict[str, tuple[str, str, int]] = {
    "missing_parameters": ("fhir-prm was opened without a launch",
                           "Open fhir-prm from a patient's chart in your EHR.", 400),
    "unknown_iss": ("This EHR is not connected",
                    "Ask your IT team to add this EHR as a connection in fhir-prm.", 400),
    "ehr_unreachable": ("The EHR could not be reached",
                        "Try again in a minute. If it persists, tell your IT team.", 502),
    "missing_state": ("The sign-in answer was incomplete", "Open fhir-prm again from the patient's chart.", 400),
    "unknown_state": ("This sign-in link was already used or is unknown",
                      "Open fhir-prm again from the patient's chart.", 400),
    "expired_state": ("The sign-in took too long", "Open fhir-prm again from the patient's chart.", 400),
    "access_denied": ("Access was not granted",
                      "fhir-prm needs your permission to read this patient. Open it again and allow access.", 403),
    "authorization_error": ("The EHR refused the sign-in", "Open fhir-prm again; if it persists, tell IT.", 400),
    "missing_code": ("The sign-in answer was incomplete", "Open fhir-prm again from the patient's chart.", 400),
    "token_exchange_failed": ("The EHR refused the sign-in",
                              "Open fhir-prm again from the patient's chart; if it persists, tell IT.", 400),
    "id_token_invalid": ("The EHR's identity token could not be trusted",
                         "This needs IT: the connection's keys or issuer may be misconfigured.", 400),
    "no_patient": ("No patient is open", "Open a patient's chart first, then fhir-prm.", 400),
    "refresh_refused": ("Your session with the EHR has ended", "Open fhir-prm again from the patient's chart.", 401),
    "session_expired": ("Your session with the EHR has ended", "Open fhir-prm again from the patient's chart.", 401),
    "no_verifier": ("The sign-in could not be completed", "Open fhir-prm again from the patient's chart.", 400),
}


def launch_problem(reason: str) -> tuple[str, str, int]:
    return _LAUNCH.get(reason, ("The launch failed", "Open fhir-prm again from the patient's chart.", 400))
