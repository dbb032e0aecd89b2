"""A synthetic hospital with the damage and oddities real exports show, to compare executors.

Built on ``prescreen synth`` (deterministic) and then, with a seeded random generator: cut and
garbage lines, wrong JSON types, codes written noncanonically, blank lines, several versions
of one resource far apart in a file, patients not to screen, records without a Patient,
Medications (plain and gzipped) that MedicationRequests reference, a byte-order mark, CRLF
line ends, a last line without a line end, a corrupt gzip file, an empty file, a file of an
unneeded type and one named for no resource type, and lines longer than LINE_LIMIT (the limit
the tests set): one amid the Observations, two in a row further on, a Patient's, the last
line of a file without a line end, and the first line of an unneeded type's file. The
Observation file is larger than the local reader's 4 MB blocks, so the order of its problems
depends on them.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from datetime import date
from pathlib import Path

from service.synth import write_population

AS_OF = date(2026, 6, 15)
_SUBJECT = re.compile(rb'"subject":\{"reference":"Patient/([^"]+)"\}')
_CODE = re.compile(rb'"code":"([^"]+)"')
_RELEVANT = re.compile(rb"72514-3|38208-5|94602001|C79\.51|karnofsky|89247-1")
LINE_LIMIT = 4 << 20  # PRESCREEN_MAX_LINE_BYTES of the tests using this hospital (its minimum)


def too_long(line: bytes, extra: int) -> bytes:
    """A resource line grown past LINE_LIMIT by a long narrative (still valid JSON)."""
    resource = json.loads(line)
    resource["text"] = {
        "status": "generated",
        "div": "<div>" + "x" * (LINE_LIMIT + extra) + "</div>",
    }
    return json.dumps(resource, separators=(",", ":")).encode()


def damage(line: bytes, rng: random.Random) -> bytes:
    """One kind of damage, chosen at random."""
    kind = rng.randrange(7)
    if kind == 0:  # cut short: a shape the reader spots without parsing
        return line[: rng.randrange(1, max(2, len(line) - 1))]
    if kind == 1:  # garbage without a line break
        return bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 80)))
    if kind == 2:  # a subject as a list: a wrong JSON type
        return line.replace(b'"subject":{', b'"subject":[{', 1).replace(b"}}", b"}]}", 1)
    if kind == 3:  # a code with spaces around it: matched after the code rules, reported
        codes = list(_CODE.finditer(line))
        if not codes:
            return line
        code = rng.choice(codes)
        return line[: code.start()] + b'"code":" ' + code.group(1) + b' "' + line[code.end() :]
    if kind == 4:  # a number as text where a number belongs: read leniently, reported
        return re.sub(rb'"valueInteger":(\d+)', rb'"valueInteger":"\1"', line, count=1)
    if kind == 5:  # an impossible date: unusable, reported
        return re.sub(rb'"(effectiveDateTime|onsetDateTime)":"[^"]*"', rb'"\1":"2026-13-45"', line)
    return b"  " + line + b"  "  # blanks around: read as is


def build(folder: Path, patients: int = 400, seed: int = 29) -> Path:
    """Write the messy hospital into ``folder`` (created) and return it."""
    rng = random.Random(seed)
    write_population(folder, patients, seed, AS_OF, spinal_fraction=0.15, median_background=60)
    for path in sorted(folder.glob("*.ndjson")):
        lines = path.read_bytes().splitlines()
        for index in rng.sample(range(len(lines)), k=max(2, len(lines) // 60)):
            lines[index] = damage(lines[index], rng)
        # Lines the mappings read are parsed: their damage is found while mapping them.
        relevant = [i for i, line in enumerate(lines) if _RELEVANT.search(line)]
        for index in rng.sample(relevant, k=len(relevant) // 6):
            lines[index] = damage(lines[index], rng)
        for index in rng.sample(range(len(lines)), k=max(1, len(lines) // 400)):
            lines.insert(index, b"")
        path.write_bytes(b"\n".join(lines) + b"\n")
    _versions(folder / "Observation.ndjson", rng)
    _long_lines(folder)
    _patients(folder / "Patient.ndjson")
    _orphans(folder / "Condition.ndjson")
    _medications(folder, rng)
    # A byte-order mark and no line end after the last line; CRLF line ends elsewhere.
    condition = folder / "Condition.ndjson"
    condition.write_bytes(b"\xef\xbb\xbf" + condition.read_bytes().rstrip(b"\n"))
    procedure = folder / "Procedure.ndjson"
    procedure.write_bytes(procedure.read_bytes().replace(b"\n", b"\r\n"))
    # A gzip stream cut in the middle: what comes before the cut counts.
    packed = gzip.compress(condition.read_bytes()[3:][:200_000])
    (folder / "Condition.extra.ndjson.gz").write_bytes(packed[: len(packed) // 2])
    (folder / "Encounter.empty.ndjson").write_bytes(b"")
    (folder / "Practitioner.ndjson").write_bytes(
        b'{"resourceType":"Practitioner","id":"dr0","x":"' + b"0" * LINE_LIMIT + b'"}\n'
        b'{"resourceType":"Practitioner","id":"dr1"}\n{"resourceType":"Practitioner","id":"dr2"}\n'
    )
    (folder / "Foo.ndjson").write_text('{"resourceType":"Foo","id":"f1"}\nnot json\n')
    return folder


def _long_lines(folder: Path) -> None:
    """Lines too long to read, where each reader could get them wrong (see the docstring)."""
    observations = folder / "Observation.ndjson"
    lines = observations.read_bytes().splitlines()
    scores = [i for i, line in enumerate(lines) if b"72514-3" in line and _parses(line)]
    first, later = scores[len(scores) // 3], scores[2 * len(scores) // 3]
    lines[later : later + 1] = [too_long(lines[later], 1), b"{" + b"9" * (LINE_LIMIT + 2)]
    lines[first] = too_long(lines[first], 700_000)
    observations.write_bytes(b"\n".join(lines) + b"\n")
    patients = folder / "Patient.ndjson"
    lines = patients.read_bytes().splitlines()
    middle = next(i for i in range(len(lines) // 2, len(lines)) if _parses(lines[i]))
    lines[middle] = too_long(lines[middle], 10)
    patients.write_bytes(b"\n".join(lines) + b"\n")
    conditions = folder / "Condition.ndjson"  # its last line loses its line end later
    lines = conditions.read_bytes().splitlines()
    lines.append(too_long(next(line for line in reversed(lines) if _parses(line)), 3))
    conditions.write_bytes(b"\n".join(lines) + b"\n")


def _parses(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _versions(path: Path, rng: random.Random) -> None:
    """Copies of pain scores with a higher versionId, far after the first copy (another
    split of the file): the later version is the record."""
    lines = path.read_bytes().splitlines()
    scores = [i for i, line in enumerate(lines) if b"72514-3" in line and line.startswith(b"{")]
    for index in rng.sample(scores, k=min(12, len(scores))):
        try:
            resource = json.loads(lines[index])
        except ValueError:
            continue
        resource["meta"] = {"versionId": "2"}
        score = resource.get("valueInteger", 0)
        # A score an earlier damage turned into a string is versioned like any other.
        resource["valueInteger"] = 9 if isinstance(score, int) and score < 5 else 1
        lines.append(json.dumps(resource, separators=(",", ":")).encode())
        resource["meta"] = {"versionId": "1"}
        lines[index] = json.dumps(resource, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines) + b"\n")


def _patients(path: Path) -> None:
    """Patients not to screen: one inactive, one merged into another record."""
    lines = path.read_bytes().splitlines()
    changed = 0
    for index, line in enumerate(lines):
        try:
            resource = json.loads(line)
        except ValueError:
            continue
        if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
            continue
        if changed == 0:
            resource["active"] = False
        elif changed == 1:
            resource["link"] = [{"other": {"reference": "Patient/p0000000"}, "type": "replaced-by"}]
        else:
            break
        lines[index] = json.dumps(resource, separators=(",", ":")).encode()
        changed += 1
    path.write_bytes(b"\n".join(lines) + b"\n")


def _orphans(path: Path) -> None:
    """Conditions of patients the source has no Patient for."""
    lines = path.read_bytes().splitlines()
    spinal = [line for line in lines if b"94602001" in line and _SUBJECT.search(line)][:3]
    for number, line in enumerate(spinal):
        ghost = _SUBJECT.sub(b'"subject":{"reference":"Patient/ghost%d"}' % number, line)
        lines.append(ghost.replace(b'"id":"', b'"id":"ghost-', 1))
    path.write_bytes(b"\n".join(lines) + b"\n")


def _medications(folder: Path, rng: random.Random) -> None:
    """Medications, some in a gzipped file, one in two versions; requests referencing them
    (and one referencing a Medication the source lacks)."""
    atc = "http://www.whocc.no/atc"

    def medication(mid: str, code: str, version: str | None = None) -> str:
        resource: dict[str, object] = {
            "resourceType": "Medication",
            "id": mid,
            "code": {"coding": [{"system": atc, "code": code}]},
        }
        if version:
            resource["meta"] = {"versionId": version}
        return json.dumps(resource)

    plain = [medication("m1", "L01XA01"), medication("m2", "N02BE01", "1")]
    (folder / "Medication.ndjson").write_text("\n".join(plain) + "\n")
    packed = [medication("m2", "L01CD01", "2"), medication("m3", "L02BA01")]
    (folder / "Medication.2.ndjson.gz").write_bytes(
        gzip.compress(("\n".join(packed) + "\n").encode())
    )
    patients = sorted(
        {m.group(1).decode() for m in _SUBJECT.finditer((folder / "Condition.ndjson").read_bytes())}
    )
    requests = []
    for number, patient in enumerate(rng.sample(patients, k=min(30, len(patients)))):
        requests.append(
            json.dumps(
                {
                    "resourceType": "MedicationRequest",
                    "id": f"mr{number}",
                    "status": "active",
                    "intent": "order",
                    "subject": {"reference": f"Patient/{patient}"},
                    "medicationReference": {"reference": f"Medication/m{number % 5}"},
                    "authoredOn": "2026-06-01",
                }
            )
        )
    (folder / "MedicationRequest.ndjson").write_text("\n".join(requests) + "\n")
