"""A policy set is all or nothing: every problem is named by file and line, and nothing half-valid is used."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import PolicySetError
from policies.loader import PolicySource, default_policy_dir, load, read_sources

ROUTES = (default_policy_dir() / "routes.cedar").read_text()


def _load(*texts: str) -> None:
    load([PolicySource("routes.cedar", ROUTES), *(PolicySource(f"extra{i}.cedar", t) for i, t in enumerate(texts))])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("permit (principal, action, resource);", 'extra0.cedar:1: the policy has no @id("...")'),
        ('@id("a b") permit (principal, action, resource);', "must be letters, digits"),
        ('@id("x")\npermit (principal, action, resource) when { context.network = "office" };', "extra0.cedar:1:"),
        ('@id("x") forbid (principal, action, resource) when { resource.pi == "c" };', "@id('x')"),
        ('@id("x") forbid (principal, action == Action::"delete", resource);', "@id('x')"),
        ('@id("x") forbid (principal, action, resource) when { context.time.hour == "9" };', "@id('x')"),
        ('@id("route-groups") forbid (principal, action, resource);', "is already used by a policy in routes.cedar"),
        ('@id("t") permit (principal == ?principal, action, resource);', "templates"),
        ('// only a comment\n\n@id("x") permit (principal, action, resource)', "extra0.cedar:3:"),
    ],
    ids=[
        "no id",
        "bad id",
        "syntax",
        "unknown attribute",
        "unknown action",
        "type mismatch",
        "duplicate id",
        "template",
        "missing semicolon",
    ],
)
def test_a_bad_policy_refuses_the_whole_set_naming_where(text: str, expected: str) -> None:
    with pytest.raises(PolicySetError) as caught:
        _load(text)
    assert expected in caught.value.message


def test_every_problem_of_a_set_is_listed_at_once() -> None:
    with pytest.raises(PolicySetError) as caught:
        _load(
            'permit (principal, action, resource);\n@id("y") forbid (principal, action, resource) when { context.x };',
            '@id("z") forbid (principal, action, resource) when { resource.nope };',
        )
    message = caught.value.message
    assert "extra0.cedar:1" in message and "@id('y')" in message and "@id('z')" in message


def test_a_syntax_error_is_located_at_its_policy_not_the_file_start() -> None:
    text = '@id("a")\npermit (principal, action, resource);\n\n// second\n'
    text += '@id("b")\nforbid (principal, action, resource) when { ;\n'
    with pytest.raises(PolicySetError) as caught:
        _load(text)
    assert "extra0.cedar:5:" in caught.value.message
    assert "extra0.cedar:1:" not in caught.value.message


def test_a_semicolon_inside_a_string_or_comment_does_not_split_a_policy() -> None:
    _load(
        '@id("a") @reason("one; two") // comment; here\n'
        'forbid (principal, action, resource) when { resource.pii == ";" };'
    )


@pytest.mark.parametrize("text", ["", "\n  \n", '// every rule commented out\n// @id("x") forbid ...;\n'])
def test_a_file_that_holds_no_policy_is_refused_naming_it(text: str) -> None:
    """An empty file is most often one caught mid-write; taking it for "no rules" would drop its forbids."""
    with pytest.raises(PolicySetError) as caught:
        _load(text)
    assert "extra0.cedar: the file holds no policy" in caught.value.message


def test_an_empty_directory_is_refused_rather_than_denying_everything(tmp_path: Path) -> None:
    with pytest.raises(PolicySetError, match=r"No \*\.cedar policy file"):
        read_sources([tmp_path])


def test_a_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(PolicySetError, match="does not exist"):
        read_sources([tmp_path / "nope"])


def test_channel_scoped_policies_are_sliced_and_others_apply_everywhere() -> None:
    bundle = load(
        [
            PolicySource("routes.cedar", ROUTES),
            PolicySource(
                "c.cedar",
                '@id("a") forbid (principal, action, resource in Channel::"crm");\n'
                '@id("b") forbid (principal, action, resource is Resource in Channel::"chat");\n'
                '@id("c") forbid (principal, action, resource) when { resource in Channel::"chat" };\n',
            ),
        ]
    )
    assert [p.id for p in bundle.for_channel("crm")] == ["route-groups", "a", "c"]
    assert [p.id for p in bundle.for_channel("chat")] == ["route-groups", "b", "c"]
    assert bundle.channels() == {"crm", "chat"}


@pytest.mark.parametrize(
    ("condition", "specific"),
    [
        ('principal in Group::"x"', False),
        ("principal in resource.allowed_groups", False),
        ("principal is Agent", False),
        ('principal.user_name == "alice"', True),
        ('principal == Agent::"alice"', True),
        ("principal has user_name", True),
        ('Agent::"alice" == principal', True),
        ('principal in Agent::"alice"', True),
        ('context.network == "office"', False),
    ],
)
def test_policies_reading_the_agent_itself_are_marked_so_decisions_are_not_shared(
    condition: str, specific: bool
) -> None:
    bundle = load(
        [
            PolicySource("routes.cedar", ROUTES),
            PolicySource("p.cedar", f'@id("p") forbid (principal, action, resource) when {{ {condition} }};'),
        ]
    )
    assert bundle.principal_specific is specific
