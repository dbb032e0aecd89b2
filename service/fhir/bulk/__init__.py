"""The FHIR Bulk Data Access client (``$export``), in the order an export runs.

- ``plan``: what to ask for (level, ``_type``, ``_typeFilter``, ``_since``), from the mappings;
- ``kickoff``: kick-off, status polling and cancellation of an export job;
- ``job``: the job's state in ``<folder>/export.json``, saved after every step, for resuming;
- ``download``: the output and error files, a few at a time, continued with HTTP ranges;
- ``references``: resources outside the Patient compartment that the files reference, by id;
- ``export``: the whole export into a folder, from kick-off to the last file.
"""
