"""Who may do what: prescreen's role model, in one place for every part that asks.

A person holds one or more roles:

- ``viewer`` reads the worklist and the patient pages (and the counts);
- ``coordinator`` does that and records decisions, for every trial or only for the trials listed
  with the role (``coordinator:relieve``, or ``prescreen users add … --trials relieve``);
- ``research`` sees counts and feasibility only: the overview's numbers and funnels, never a
  patient page or a list of patients;
- ``admin`` administers: the people who may sign in and the access audit (and sees the counts).

Roles come from ``prescreen users add --role`` (stored with the person) or, for a person signed
in by the hospital's identity provider and not added here, from its roles claim. Roles add up:
``admin`` with ``coordinator`` may do both. Nothing else grants a right; in particular no name.

The questions a page or an endpoint asks (:class:`Access`):

- ``may_see_counts()``: aggregate numbers (overview, funnel, feasibility);
- ``may_see_patients()``: patient pages, worklists, anything naming a patient;
- ``may_decide(trial)``: record a decision for a patient of that trial;
- ``may_administer()``: manage people, read the access audit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

VIEWER, COORDINATOR, RESEARCH, ADMIN = "viewer", "coordinator", "research", "admin"
ROLES = (VIEWER, COORDINATOR, RESEARCH, ADMIN)
# What each role may do, beyond the counts every role sees.
_SEES_PATIENTS = frozenset({VIEWER, COORDINATOR})
_ADMINISTERS = frozenset({ADMIN})


class RoleError(ValueError):
    """A role or trial list that is not one of the model's."""


@dataclass(frozen=True)
class Access:
    """The roles a person holds, and the trials their coordinator role is limited to (empty:
    every trial)."""

    roles: frozenset[str]
    trials: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = sorted(self.roles - set(ROLES))
        if unknown:
            raise RoleError(f"unknown role(s): {', '.join(unknown)}; roles: {', '.join(ROLES)}")

    # --- the questions ----------------------------------------------------------------------

    def may_see_counts(self) -> bool:
        return bool(self.roles)

    def may_see_patients(self) -> bool:
        return bool(self.roles & _SEES_PATIENTS)

    def may_decide(self, trial: str) -> bool:
        return COORDINATOR in self.roles and (not self.trials or trial in self.trials)

    def may_administer(self) -> bool:
        return bool(self.roles & _ADMINISTERS)

    # --- storing and showing ----------------------------------------------------------------

    @property
    def roles_text(self) -> str:
        """The roles as stored: comma-separated, in the model's order."""
        return ",".join(role for role in ROLES if role in self.roles)

    @property
    def trials_text(self) -> str:
        return ",".join(sorted(self.trials))

    @property
    def label(self) -> str:
        """For a page header: ``coordinator (relieve) · admin``."""
        parts = []
        for role in ROLES:
            if role in self.roles:
                scoped = role == COORDINATOR and self.trials
                parts.append(f"{role} ({', '.join(sorted(self.trials))})" if scoped else role)
        return " · ".join(parts)

    @classmethod
    def stored(cls, roles: str, trials: str) -> Access:
        """From the stored text (``roles_text``, ``trials_text``)."""
        return cls(_split(roles), _split(trials))

    @classmethod
    def of(cls, roles: Iterable[str], trials: Iterable[str] = ()) -> Access:
        return cls(frozenset(r.strip() for r in roles if r.strip()), _split(",".join(trials)))


def _split(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def from_claim(values: Iterable[str]) -> Access | None:
    """The access a roles claim grants: ``viewer``, ``coordinator`` (every trial),
    ``coordinator:<trial>`` (repeatable), ``research``, ``admin``; other values are ignored.
    None when it grants nothing. A plain ``coordinator`` wins over listed trials."""
    roles: set[str] = set()
    trials: set[str] = set()
    every_trial = False
    for value in values:
        role, _, trial = value.strip().partition(":")
        if role not in ROLES or (trial and role != COORDINATOR):
            continue
        roles.add(role)
        if role == COORDINATOR:
            if trial:
                trials.add(trial)
            else:
                every_trial = True
    if not roles:
        return None
    return Access(frozenset(roles), frozenset() if every_trial else frozenset(trials))
