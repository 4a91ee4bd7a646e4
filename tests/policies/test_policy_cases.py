"""The shipped case tables (policies/tests/*.toml) pass against the shipped policies, and ``channelgate policy
test`` / ``policy validate`` say so with the exit codes CI relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from policies.cases import CaseResult, case_files, read_case_file, run_case_file

CASES = Path(__file__).resolve().parents[2] / "policies" / "tests"
_RESULTS = [result for path in case_files([CASES]) for result in run_case_file(read_case_file(path))]


def test_the_shipped_case_tables_are_not_empty() -> None:
    assert len(_RESULTS) >= 25


@pytest.mark.parametrize("result", _RESULTS, ids=[r.case.name for r in _RESULTS])
def test_shipped_policy_case(result: CaseResult) -> None:
    assert result.passed, result.describe()


def test_policy_test_exits_0_when_every_case_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test", str(CASES)]) == 0
    assert f"{len(_RESULTS)} passed, 0 failed" in capsys.readouterr().out


def test_policy_test_exits_1_and_names_the_failing_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "wrong.toml").write_text(
        'policies = ["' + str(CASES.parent / "default") + '"]\n'
        "[[case]]\n"
        'name = "an agent outside the groups is (wrongly) expected in"\n'
        'groups = ["mail-agents"]\nchannel = "chat"\nallowed_groups = ["chat-agents"]\nexpect = "allow"\n'
    )
    assert main(["policy", "test", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  wrong.toml: an agent outside the groups is (wrongly) expected in" in out
    assert "expected allow; got deny by default-deny" in out


def test_policy_test_can_run_the_tables_against_a_changed_set(tmp_path: Path) -> None:
    """Running the example tables against the default set alone fails: the cases really test the examples."""
    assert (
        main(["policy", "test", str(CASES / "contact-center.toml"), "--policies", str(CASES.parent / "default")]) == 1
    )


def test_policy_validate_exits_2_naming_file_line_and_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.cedar"
    bad.write_text(
        '// a typo in an attribute\n\n@id("typo")\nforbid (principal, action, resource) when { resource.pi == "x" };\n'
    )
    assert main(["policy", "validate", str(CASES.parent / "default"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: @id('typo')" in err
    assert "pi" in err


def test_policy_validate_lists_the_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(CASES.parent / "default"), str(CASES.parent / "examples")]) == 0
    out = capsys.readouterr().out
    assert "6 policies in 2 files are valid" in out
    assert "supervisors-crm-exports" in out and "channel crm" in out
