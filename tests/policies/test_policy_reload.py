"""Hot reload puts a state of the policy files in force only once it has settled: a file caught mid-write (cp, scp,
an editor saving in place) or truncated to nothing never is, and the set in force stays until the write ends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import gateway.policy_point
from gateway.policy_point import PolicyPoint
from gateway.settings_policies import PolicySettings
from policies.decision import Clock, Context, Subject, Target
from policies.loader import PolicySource, read_sources

ROOT = Path(__file__).resolve().parents[2] / "policies"
EXAMPLES = (ROOT / "examples" / "contact-center.cedar").read_text()
#: Where a writer that is slow enough is caught: the trainees' shift rule comes after this.
CUT = EXAMPLES.index("// Trainees work the chat console")
TRAINEE = Subject("t1", "t1", frozenset({"trainees"}))
CRM = Target("crm", ("crm-agents", "trainees"), "/crm/", "none")
SUNDAY_NIGHT = Context(time=Clock(7, 23, 23 * 60), network="office")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "routes.cedar").write_text((ROOT / "default" / "routes.cedar").read_text())
    path = tmp_path / "site.cedar"
    path.write_text(EXAMPLES)
    return path


def _point(site: Path) -> PolicyPoint:
    point = PolicyPoint(PolicySettings(paths=(site.parent,), reload_interval_seconds=0))
    assert _trainee_refused(point)  # trainees-chat-during-shift
    return point


def _trainee_refused(point: PolicyPoint) -> bool:
    return not point.decide(TRAINEE, CRM, "view", SUNDAY_NIGHT).allowed


def _write(path: Path, text: str) -> None:
    """Write in place, with an mtime that differs from the last one even on a coarse file system clock."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, max(stat.st_mtime_ns, before + 1_000_000)))


def test_a_change_is_put_in_force_on_the_poll_after_the_one_that_saw_it(site: Path) -> None:
    point = _point(site)
    _write(site, EXAMPLES[:CUT])  # the trainees' shift rule is dropped on purpose
    assert point.reload_if_changed() is None  # seen once: it may still be being written
    outcome = point.reload_if_changed()
    assert outcome is not None and outcome.error is None and str(site) in outcome.files
    assert not _trainee_refused(point)
    assert point.reload_if_changed() is None  # nothing changed since


def test_a_file_caught_mid_write_is_not_put_in_force(site: Path) -> None:
    point = _point(site)
    engine = point.engine
    _write(site, EXAMPLES[:CUT])  # a valid set on its own: only the trainees' forbid is missing
    assert point.reload_if_changed() is None
    _write(site, EXAMPLES)  # the writer finishes before the next poll
    assert point.reload_if_changed() is None
    assert point.engine is engine and _trainee_refused(point)
    outcome = point.reload_if_changed()  # settled: the whole file
    assert outcome is not None and outcome.error is None
    assert _trainee_refused(point)


def test_a_file_truncated_to_nothing_is_refused_and_the_set_in_force_stays(site: Path) -> None:
    point = _point(site)
    engine = point.engine
    _write(site, "")  # open(..., "w") has truncated; the writer stalled before writing anything
    assert point.reload_if_changed() is None
    outcome = point.reload_if_changed()
    assert outcome is not None and outcome.error is not None
    assert f"{site}: the file holds no policy" in outcome.error
    assert point.engine is engine and _trainee_refused(point)


def test_files_that_change_while_being_read_are_not_put_in_force(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    point = _point(site)
    engine = point.engine
    _write(site, EXAMPLES[:CUT])
    assert point.reload_if_changed() is None

    def read_then_written(paths: list[Path]) -> list[PolicySource]:
        sources = read_sources(paths)
        _write(site, EXAMPLES)  # the writer resumes while we read
        return sources

    monkeypatch.setattr(gateway.policy_point, "read_sources", read_then_written)
    assert point.reload_if_changed() is None  # the prefix was read, and discarded
    monkeypatch.setattr(gateway.policy_point, "read_sources", read_sources)
    assert point.engine is engine and _trainee_refused(point)
    assert point.reload_if_changed() is None  # the finished file, seen once
    outcome = point.reload_if_changed()
    assert outcome is not None and outcome.error is None and _trainee_refused(point)
