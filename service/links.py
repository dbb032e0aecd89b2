"""Links into the web worklist, for alerts and CDS Hooks cards."""

from __future__ import annotations

from urllib.parse import quote, urlencode


def patient_page_url(public_url: str | None, trial: str, patient_id: str) -> str | None:
    """The patient page of the web worklist, opened at ``trial``; None without a public URL.

    The URL carries the FHIR patient id and the trial name only: nothing else about the patient.
    """
    if not public_url or not public_url.startswith(("http://", "https://")):
        return None
    base = public_url.rstrip("/")
    return f"{base}/ui/patients/{quote(patient_id, safe='')}?{urlencode({'trial': trial})}"
