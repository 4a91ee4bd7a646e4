"""Policies as code: table-style cases (who, what, when, from where → expected decision) run against a set.

A case file is TOML (policies/tests/*.toml)::

    policies = ["../default", "../examples"]        # relative to this file

    [channels.crm]
    allowed_groups = ["crm-agents"]

    [[case]]
    name = "an agent without MFA cannot open a customer record"
    groups = ["crm-agents"]
    channel = "crm"
    pii = "customer"
    action = "view"
    when = "Tue 10:30"
    expect = "deny"
    policies = ["customer-data-needs-mfa"]          # optional: the ids that must decide

``channelgate policy test`` and the test suite run them; a failure names the case, what was expected and what
decided instead. Values are type-checked (``mfa = "false"`` is refused, not read as true), and ``mfa`` is derived
from ``amr`` / ``acr`` exactly as the gateway derives it (``has_mfa``) unless a case sets it: the file's
``mfa_amr_values`` / ``mfa_acr_values`` stand for ``[policies]``'s, with the same defaults.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import PolicySetError
from policies.decision import ACTIONS, DEFAULT_MFA_AMR, Clock, Context, Decision, Query, Subject, Target, has_mfa
from policies.engine import PolicyEngine
from policies.loader import load, read_sources

_WEEKDAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}
_CASE_KEYS = frozenset(
    {"name", "user", "groups", "channel", "prefix", "pii", "action", "when", "network", "mfa", "acr", "amr",
     "device", "via", "allowed_groups", "expect", "policies"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    query: Query
    expect_allowed: bool
    expect_policies: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class CaseFile:
    path: Path
    policy_paths: tuple[Path, ...]
    cases: tuple[Case, ...]


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    decision: Decision

    @property
    def passed(self) -> bool:
        case = self.case
        if self.decision.allowed != case.expect_allowed:
            return False
        return case.expect_policies is None or set(case.expect_policies) == set(self.decision.policy_ids)

    def describe(self) -> str:
        got = "allow" if self.decision.allowed else "deny"
        want = "allow" if self.case.expect_allowed else "deny"
        text = f"expected {want}"
        if self.case.expect_policies is not None:
            text += f" by {', '.join(self.case.expect_policies) or '(no policy)'}"
        return f"{text}; got {got} by {', '.join(self.decision.policy_ids) or '(no policy)'}"


def parse_clock(text: str) -> Clock:
    """``"Tue 10:30"`` → weekday 2, hour 10, minute of day 630."""
    day, _, hhmm = text.strip().partition(" ")
    hour, _, minute = hhmm.partition(":")
    weekday = _WEEKDAYS.get(day[:3].lower())
    if weekday is None or not hour.isdigit() or not minute.isdigit():
        raise ValueError(f'when = {text!r} must look like "Tue 10:30"')
    h, m = int(hour), int(minute)
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError(f"when = {text!r} is not a time of day")
    return Clock(weekday, h, h * 60 + m)


def read_case_file(path: Path) -> CaseFile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PolicySetError(f"{path}: cannot read the case file: {exc}") from exc
    policy_paths = tuple((path.parent / p).resolve() for p in data.get("policies", ()))
    if not policy_paths:
        raise PolicySetError(f'{path}: name the policies it tests, e.g. policies = ["../default"]')
    channels: dict[str, Any] = data.get("channels", {})
    try:
        mfa_amr = frozenset(_strings(data, "mfa_amr_values", DEFAULT_MFA_AMR))
        mfa_acr = frozenset(_strings(data, "mfa_acr_values"))
    except ValueError as exc:
        raise PolicySetError(f"{path}: {exc}") from exc
    cases = []
    for index, raw in enumerate(data.get("case", ()), start=1):
        try:
            cases.append(_case(raw, channels, mfa_amr, mfa_acr))
        except (KeyError, TypeError, ValueError) as exc:
            name = raw.get("name", f"case {index}") if isinstance(raw, dict) else f"case {index}"
            raise PolicySetError(f"{path}: {name}: {exc}") from exc
    if not cases:
        raise PolicySetError(f"{path}: no [[case]] tables: a case file must test something")
    return CaseFile(path, policy_paths, tuple(cases))


def _case(raw: dict[str, Any], channels: dict[str, Any], mfa_amr: frozenset[str], mfa_acr: frozenset[str]) -> Case:
    unknown = sorted(set(raw) - _CASE_KEYS)
    if unknown:
        raise ValueError(f"unknown keys {', '.join(unknown)}")
    channel = _text(raw, "channel")
    action = _text(raw, "action", "view")
    if action not in ACTIONS:
        raise ValueError(f"action = {action!r} must be one of {', '.join(sorted(ACTIONS))}")
    expect = _text(raw, "expect")
    if expect not in ("allow", "deny"):
        raise ValueError('expect must be "allow" or "deny"')
    channel_table = channels.get(channel, {})
    if not isinstance(channel_table, dict):
        raise ValueError(f"channels.{channel} must be a table")
    allowed = _strings(raw, "allowed_groups") if "allowed_groups" in raw else _strings(channel_table, "allowed_groups")
    user = _text(raw, "user", "agent")
    amr, acr = _strings(raw, "amr"), _text(raw, "acr", "")
    mfa = raw.get("mfa")
    if mfa is None:
        mfa = has_mfa(amr, acr, mfa_amr, mfa_acr)  # as the gateway derives it from the sign-in
    elif not isinstance(mfa, bool):
        raise ValueError(f"mfa = {mfa!r} must be true or false (a TOML boolean, without quotes)")
    query = Query(
        Subject(agent_id=user, user_name=user, groups=frozenset(_strings(raw, "groups"))),
        Target(channel, allowed, prefix=_text(raw, "prefix", f"/{channel}/"), pii=_text(raw, "pii", "none")),
        action,
        Context(
            time=parse_clock(_text(raw, "when", "Wed 10:00")),
            network=_text(raw, "network", "other"),
            mfa=mfa,
            acr=acr,
            amr=amr,
            device=_text(raw, "device", "unknown"),
            via=_text(raw, "via", "inline"),
        ),
    )
    expected = _strings(raw, "policies") if "policies" in raw else None
    return Case(_text(raw, "name"), query, expect == "allow", expected)


def _text(table: dict[str, Any], key: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if value is None:
        raise ValueError(f"{key} is missing")
    if not isinstance(value, str):
        raise ValueError(f'{key} = {value!r} must be a string (in quotes, e.g. {key} = "...")')
    return value


def _strings(table: dict[str, Any], key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
    """A list of strings; a bare string is refused, not taken for the set of its characters."""
    value = table.get(key, default)
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ValueError(f'{key} = {value!r} must be a list of strings (e.g. {key} = ["crm-agents"])')
    return tuple(value)


def run_case_file(case_file: CaseFile, policy_paths: Sequence[Path] | None = None) -> list[CaseResult]:
    """Run every case against the file's policies (or ``policy_paths`` when given)."""
    engine = PolicyEngine(load(read_sources(list(policy_paths or case_file.policy_paths))))
    return [CaseResult(case, engine.evaluate(case.query)) for case in case_file.cases]


def case_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.toml")) if path.is_dir() else [path])
    return files
