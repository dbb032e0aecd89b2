"""Make the Synthea sample in this folder: a Synthea 3.3.0 Bulk Data export, trimmed.

Synthea takes over two minutes on this project's machines (a JVM loading some 200 modules, then
the simulation), too long for every test run, so its output is made once and kept here:

    python tests/data/synthea/make_sample.py            # runs Synthea (Java 17, Maven)
    python tests/data/synthea/make_sample.py --from DIR # trims an export made by the same command

Synthea runs with a fixed seed, reference date and state (``SYNTHEA_ARGS``) and
``exporter.fhir.bulk_data=true``: one ``<Type>.ndjson`` per resource type, Organizations,
Locations, Practitioners and PractitionerRoles in ``<Type>.<timestamp>.ndjson`` files,
references to them conditional (``Location?identifier=…``). The trimming keeps the export's
files, lines and bytes as Synthea wrote them, for the ``KEEP`` patients with the fewest
resources: their resources, the Provenance naming them, the Medications their orders reference,
and every Organization, Location, Practitioner and PractitionerRole of the export.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEEP = 3
SYNTHEA_ARGS = ["-p", "30", "-s", "42", "-cs", "42", "-r", "20260101", "Massachusetts"]
SYNTHEA_OPTIONS = ["--exporter.fhir.bulk_data=true", "--exporter.years_of_history=10"]
SHARED = ("Organization", "Location", "Practitioner", "PractitionerRole")


def run_synthea(out: Path) -> Path:
    classpath = out / "classpath.txt"
    subprocess.run(
        ["mvn", "-B", "-q", "dependency:build-classpath", f"-Dmdep.outputFile={classpath}"],
        cwd=HERE,
        check=True,
    )
    jar = Path.home() / ".m2/repository/org/mitre/synthea/synthea/3.3.0/synthea-3.3.0.jar"
    subprocess.run(
        [
            "java",
            "-Xmx1g",
            "-cp",
            f"{jar}:{classpath.read_text().strip()}",
            "App",
            *SYNTHEA_ARGS[:-1],
            *SYNTHEA_OPTIONS,
            f"--exporter.baseDirectory={out}/",
            SYNTHEA_ARGS[-1],
        ],
        check=True,
    )
    return out / "fhir"


def owner(resource: dict[str, object]) -> str | None:
    """The patient a resource belongs to, by its own subject-like element."""
    if resource["resourceType"] == "Patient":
        return f"Patient/{resource['id']}"
    for element in ("subject", "patient", "beneficiary"):
        reference = resource.get(element)
        if isinstance(reference, dict) and str(reference.get("reference", "")).startswith(
            "Patient/"
        ):
            return str(reference["reference"])
    return None


def trim(export: Path, keep: int) -> dict[str, int]:
    lines: dict[str, list[bytes]] = {}
    for path in sorted(export.glob("*.ndjson")):
        lines[path.name] = [line for line in path.read_bytes().splitlines() if line.strip()]
    sizes: Counter[str] = Counter()
    for found in lines.values():
        for line in found:
            patient = owner(json.loads(line))
            if patient:
                sizes[patient] += 1
    kept = {patient for patient, _ in sorted(sizes.items(), key=lambda kv: (kv[1], kv[0]))[:keep]}
    medications = set()
    chosen: dict[str, list[bytes]] = {}
    for name, found in lines.items():
        rtype = name.split(".")[0]
        for line in found:
            resource = json.loads(line)
            patient = owner(resource)
            named = {target.get("reference") for target in resource.get("target", [])}
            if rtype in SHARED or patient in kept or (rtype == "Provenance" and named & kept):
                chosen.setdefault(name, []).append(line)
                medication = resource.get("medicationReference", {}).get("reference")
                if patient in kept and medication:
                    medications.add(medication)
    chosen["Medication.ndjson"] = [
        line
        for line in lines.get("Medication.ndjson", [])
        if f"Medication/{json.loads(line)['id']}" in medications
    ]
    for old in HERE.glob("*.ndjson"):
        old.unlink()
    counts = {}
    for name, found in sorted(chosen.items()):
        if found:
            (HERE / name).write_bytes(b"\n".join(found) + b"\n")
            counts[name] = len(found)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--from", dest="source", type=Path, help="an export already made")
    args = parser.parse_args()
    if args.source:
        counts = trim(args.source, KEEP)
    else:
        work = Path(tempfile.mkdtemp(prefix="synthea-"))
        try:
            counts = trim(run_synthea(work), KEEP)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    manifest = {
        "generator": "Synthea 3.3.0 (org.mitre.synthea:synthea:3.3.0, Maven Central)",
        "arguments": [*SYNTHEA_ARGS[:-1], *SYNTHEA_OPTIONS, SYNTHEA_ARGS[-1]],
        "patients": KEEP,
        "files": counts,
    }
    (HERE / "sample.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
