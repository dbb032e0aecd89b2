"""Who the screened patients are, as the worklist keeps it: the details a mapping's display
section read (name, medical record number, birth date, sex), and how they are searched.

Names are searched word by word, each word anywhere in the name, without regard to case or
accents ("garcia" finds "García, Lucía"); a medical record number or a FHIR id must be given
whole (also without regard to case and surrounding spaces).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from service.mapping.display import PatientDetails

_DROPPED = re.compile(r"['’`]")  # O'Brien and OBrien are one name
_SEPARATORS = re.compile(r"[^\w]+")
_LIKE_SPECIALS = re.compile(r"([\\%_])")
LONGEST_QUERY = 200


def fold(text: str) -> str:
    """Lower case, accents and apostrophes removed, other punctuation a single space."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return _SEPARATORS.sub(" ", _DROPPED.sub("", bare)).strip()


def fold_identifier(text: str) -> str:
    return text.strip().casefold()


def details_row(patient_id: str, details: PatientDetails) -> dict[str, Any]:
    """The patient_details columns of one patient."""
    return {
        "patient_id": patient_id,
        "name": details.name,
        "name_key": fold(details.name)[:200],
        "mrn": details.mrn,
        "mrn_key": fold_identifier(details.mrn)[:200],
        "birth_date": details.birth_date,
        "sex": details.sex,
    }


def like_pattern(word: str) -> str:
    """``%word%`` with LIKE's own characters escaped (the query uses ESCAPE '\\')."""
    return "%" + _LIKE_SPECIALS.sub(r"\\\1", word) + "%"


def query_words(query: str) -> list[str]:
    """The folded words of a search (at most eight: more narrow nothing down)."""
    return fold(query[:LONGEST_QUERY]).split()[:8]
