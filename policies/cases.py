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
decided instead.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import PolicySetError
from policies.decision import ACTIONS, Clock, Context, Decision, Query, Subject, Target
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
    cases = []
    for index, raw in enumerate(data.get("case", ()), start=1):
        try:
            cases.append(_case(raw, channels))
        except (KeyError, TypeError, ValueError) as exc:
            name = raw.get("name", f"case {index}") if isinstance(raw, dict) else f"case {index}"
            raise PolicySetError(f"{path}: {name}: {exc}") from exc
    if not cases:
        raise PolicySetError(f"{path}: no [[case]] tables: a case file must test something")
    return CaseFile(path, policy_paths, tuple(cases))


def _case(raw: dict[str, Any], channels: dict[str, Any]) -> Case:
    unknown = sorted(set(raw) - _CASE_KEYS)
    if unknown:
        raise ValueError(f"unknown keys {', '.join(unknown)}")
    channel = str(raw["channel"])
    action = str(raw.get("action", "view"))
    if action not in ACTIONS:
        raise ValueError(f"action = {action!r} must be one of {', '.join(sorted(ACTIONS))}")
    expect = str(raw["expect"])
    if expect not in ("allow", "deny"):
        raise ValueError('expect must be "allow" or "deny"')
    allowed = raw.get("allowed_groups", channels.get(channel, {}).get("allowed_groups", ()))
    user = str(raw.get("user", "agent"))
    query = Query(
        Subject(agent_id=user, user_name=user, groups=frozenset(raw.get("groups", ()))),
        Target(channel, tuple(allowed), prefix=str(raw.get("prefix", f"/{channel}/")), pii=str(raw.get("pii", "none"))),
        action,
        Context(
            time=parse_clock(str(raw.get("when", "Wed 10:00"))),
            network=str(raw.get("network", "other")),
            mfa=bool(raw.get("mfa", False)),
            acr=str(raw.get("acr", "")),
            amr=tuple(raw.get("amr", ())),
            device=str(raw.get("device", "unknown")),
            via=str(raw.get("via", "inline")),
        ),
    )
    expected = raw.get("policies")
    return Case(str(raw["name"]), query, expect == "allow", tuple(expected) if expected is not None else None)


def run_case_file(case_file: CaseFile, policy_paths: Sequence[Path] | None = None) -> list[CaseResult]:
    """Run every case against the file's policies (or ``policy_paths`` when given)."""
    engine = PolicyEngine(load(read_sources(list(policy_paths or case_file.policy_paths))))
    return [CaseResult(case, engine.evaluate(case.query)) for case in case_file.cases]


def case_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.toml")) if path.is_dir() else [path])
    return files
