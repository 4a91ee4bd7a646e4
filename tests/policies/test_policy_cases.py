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


def _case_file(tmp_path: Path, case: str, head: str = "") -> Path:
    path = tmp_path / "c.toml"
    path.write_text(
        f'policies = ["{CASES.parent / "default"}", "{CASES.parent / "examples"}"]\n{head}'
        '[channels.crm]\nallowed_groups = ["crm-agents"]\n'
        f'[[case]]\nname = "the case"\nchannel = "crm"\n{case}'
    )
    return path


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ('groups = ["crm-agents"]\npii = "customer"\nmfa = "false"\nexpect = "deny"\n', "mfa = 'false'"),
        ('groups = "crm-agents"\nexpect = "allow"\n', "groups = 'crm-agents'"),
        ('groups = ["crm-agents", 7]\nexpect = "allow"\n', "groups = ['crm-agents', 7]"),
        ('groups = ["crm-agents"]\namr = "otp"\nexpect = "allow"\n', "amr = 'otp'"),
        ('groups = ["crm-agents"]\nallowed_groups = "crm-agents"\nexpect = "allow"\n', "allowed_groups = 'crm-agents'"),
        ('groups = ["crm-agents"]\nexpect = "allow"\npolicies = "route-groups"\n', "policies = 'route-groups'"),
        ('groups = ["crm-agents"]\nnetwork = 10\nexpect = "allow"\n', "network = 10"),
        ('groups = ["crm-agents"]\n', "expect is missing"),
    ],
    ids=["mfa string", "groups string", "groups non-string", "amr string", "allowed_groups string",
         "policies string", "network number", "expect missing"],
)  # fmt: skip
def test_a_case_value_of_the_wrong_type_is_refused_naming_file_case_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, field: str
) -> None:
    """``mfa = "false"`` is not read as true, nor ``groups = "crm-agents"`` as the set of its characters."""
    path = _case_file(tmp_path, case)
    assert main(["policy", "test", str(path)]) == 2
    assert f"{path}: the case: {field}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("case", "head", "code"),
    [
        ('amr = ["pwd", "otp"]\nexpect = "allow"\n', "", 0),
        ('amr = ["pwd", "otp"]\nexpect = "deny"\n', "", 1),
        ('amr = ["pwd"]\nexpect = "deny"\n', "", 0),
        ('acr = "phr"\nexpect = "deny"\n', "", 0),
        ('acr = "phr"\nexpect = "allow"\n', 'mfa_acr_values = ["phr"]\n', 0),
        ('amr = ["otp"]\nexpect = "deny"\n', 'mfa_amr_values = ["hwk"]\n', 0),
        ('amr = ["otp"]\nmfa = false\nexpect = "deny"\n', "", 0),
    ],
    ids=["otp is mfa", "otp is not a deny", "pwd is not mfa", "acr not configured", "configured acr",
         "configured amr", "explicit mfa wins"],
)  # fmt: skip
def test_mfa_of_a_case_is_derived_from_amr_and_acr_as_the_gateway_derives_it(
    tmp_path: Path, case: str, head: str, code: int
) -> None:
    customer_record = 'groups = ["crm-agents"]\npii = "customer"\n'  # customer-data-needs-mfa decides
    assert main(["policy", "test", str(_case_file(tmp_path, customer_record + case, head))]) == code
