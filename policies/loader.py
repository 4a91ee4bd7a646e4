"""Policy files → one validated set: parsed by Cedar, checked against our schema, every policy named.

A set is all or nothing: one bad file (a syntax error, an attribute the schema lacks, two policies with one
``@id``, a template) refuses the whole set with every problem listed by file and line, so the set in force
stays (hot reload, gateway/policy_reload.py). Each policy must carry ``@id("...")``: the access log names the
policies that decided each request, and positions (``policy0``) change whenever a file is edited.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cedarpy

from gateway.errors import PolicySetError

#: What a policy id may look like: it is written to the access log and shown on the 403 page.
_POLICY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")

#: Name, size and mtime (ns) of every policy file, for hot reload's change detection.
Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class PolicySource:
    #: Where the text came from, as shown in error messages.
    name: str
    text: str


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    id: str
    source: str
    line: int
    effect: str
    #: The Cedar JSON form (EST) of this one policy.
    est: dict[str, Any]
    #: The ``@reason`` annotation: the words the 403 page shows when this policy decides.
    reason: str | None
    #: The channel of a ``resource in Channel::"x"`` scope, None when the policy applies to every channel.
    channel: str | None
    #: Whether the policy looks at the principal's identity or attributes (not only its groups): decisions
    #: can then not be shared between agents with the same groups (policies/engine.py).
    principal_specific: bool
    #: The groups the policy names (``Group::"x"``): membership of any other group cannot change what it says,
    #: apart from the route's own ``allowed_groups``, which ``resource.allowed_groups`` brings in.
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PolicyBundle:
    policies: tuple[LoadedPolicy, ...]
    #: SHA-256 over the sources, for the access log's reload record and ``policy validate``.
    digest: str
    sources: tuple[str, ...]

    @property
    def principal_specific(self) -> bool:
        return any(policy.principal_specific for policy in self.policies)

    def channels(self) -> frozenset[str]:
        return frozenset(p.channel for p in self.policies if p.channel is not None)

    def for_channel(self, channel: str) -> tuple[LoadedPolicy, ...]:
        """The policies that can decide a request to ``channel``: its own and every channel-wide one."""
        return tuple(p for p in self.policies if p.channel in (None, channel))

    def reason_of(self, policy_id: str) -> str | None:
        for policy in self.policies:
            if policy.id == policy_id:
                return policy.reason
        return None


def schema_text() -> str:
    """The packaged schema of our entities (policies/schema.cedarschema)."""
    return resources.files("policies").joinpath("schema.cedarschema").read_text(encoding="utf-8")


def default_policy_dir() -> Path:
    """The packaged default set: the spine's group rule (policies/default/routes.cedar)."""
    return Path(str(resources.files("policies").joinpath("default")))


def read_sources(paths: Sequence[Path]) -> list[PolicySource]:
    """Every ``*.cedar`` file of the given directories (sorted, not recursive) and files."""
    sources: list[PolicySource] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix == ".cedar" and p.is_file())
        elif path.is_file():
            files = [path]
        else:
            raise PolicySetError(f"Policy path {path} does not exist (set [policies] paths in channelgate.toml).")
        for file in files:
            try:
                sources.append(PolicySource(str(file), file.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                raise PolicySetError(f"Cannot read policy file {file}: {exc}") from exc
    if not sources:
        raise PolicySetError(
            f"No *.cedar policy file in {', '.join(map(str, paths))}: with no policy every request would be "
            "refused; copy policies/default/routes.cedar there to keep the route group rule."
        )
    return sources


def fingerprint(paths: Sequence[Path]) -> Fingerprint:
    """Cheap change detection for hot reload: name, size and mtime of every policy file."""
    entries: list[tuple[str, int, int]] = []
    for path in paths:
        try:
            files = sorted(path.iterdir()) if path.is_dir() else [path]
            for file in files:
                if file.suffix == ".cedar":
                    stat = file.stat()
                    entries.append((str(file), stat.st_size, stat.st_mtime_ns))
        except OSError:
            entries.append((str(path), -1, -1))
    return tuple(entries)


def load(sources: Iterable[PolicySource], schema: str | None = None) -> PolicyBundle:
    """Parse, name and validate every policy; raise PolicySetError listing every problem."""
    sources = list(sources)
    problems: list[str] = []
    policies: list[LoadedPolicy] = []
    seen: dict[str, str] = {}
    for source in sources:
        statements = _statements(source.text)
        if not statements:
            # An empty file is most often one caught mid-write (truncated, nothing written yet): taking it for
            # "no rules here" would silently drop every forbid it held.
            problems.append(
                f"{source.name}: the file holds no policy (empty, or caught while being written); "
                "add a policy or remove the file"
            )
        for line, chunk in statements:
            try:
                parsed = json.loads(cedarpy.policies_to_json_str(chunk))
            except ValueError as exc:
                problems.append(f"{source.name}:{line}: {exc}")
                continue
            if parsed.get("templates"):
                problems.append(f"{source.name}:{line}: templates (?principal / ?resource) are not supported")
            for est in parsed.get("staticPolicies", {}).values():
                policy = _policy(source.name, line, est, problems)
                if policy is None:
                    continue
                if policy.id in seen:
                    problems.append(
                        f"{source.name}:{line}: @id({policy.id!r}) is already used by a policy in {seen[policy.id]}"
                    )
                    continue
                seen[policy.id] = f"{source.name}:{line}"
                policies.append(policy)
    if policies:  # the policies that parsed are validated too, so one run names every problem
        problems.extend(_validate(policies, schema if schema is not None else schema_text()))
    if problems:
        raise PolicySetError("The policy set was refused:\n  " + "\n  ".join(problems))
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.text.encode() + b"\0")
    return PolicyBundle(tuple(policies), digest.hexdigest(), tuple(s.name for s in sources))


def policy_set_json(policies: Iterable[LoadedPolicy]) -> str:
    """A Cedar JSON policy set whose keys are the ``@id``s, so a decision's reasons are our ids."""
    return json.dumps({"staticPolicies": {p.id: p.est for p in policies}, "templates": {}, "templateLinks": []})


def _policy(source: str, line: int, est: dict[str, Any], problems: list[str]) -> LoadedPolicy | None:
    annotations: dict[str, str] = est.get("annotations") or {}
    policy_id = annotations.get("id")
    if policy_id is None:
        problems.append(f'{source}:{line}: the policy has no @id("..."); the access log names policies by it')
        return None
    if not _POLICY_ID.fullmatch(policy_id):
        problems.append(f"{source}:{line}: @id({policy_id!r}) must be letters, digits and _ . : - (at most 100)")
        return None
    return LoadedPolicy(
        id=policy_id,
        source=source,
        line=line,
        effect=est["effect"],
        est=est,
        reason=annotations.get("reason"),
        channel=_scoped_channel(est["resource"]),
        principal_specific=_principal_specific(est),
        groups=frozenset(_named_groups(est)),
    )


def _validate(policies: list[LoadedPolicy], schema: str) -> list[str]:
    # Validated as text in our order: the validator names policies by position (policy0, policy1 ...).
    text = cedarpy.policies_from_json_str(policy_set_json(policies))
    positions = {f"policy{i}": p for i, p in enumerate(policies)}
    try:
        result = cedarpy.validate_policies(text, schema)
    except ValueError as exc:
        return [f"the schema could not be read: {exc}"]
    problems = []
    for error in result.errors:
        policy = positions.get(error.policy_id)
        where = f"{policy.source}:{policy.line}: @id({policy.id!r})" if policy else "the policy set"
        problems.append(f"{where}: {error.error}")
    return problems


def _scoped_channel(scope: dict[str, Any]) -> str | None:
    """``resource in Channel::"x"`` (or ``is Resource in Channel::"x"``) names one channel; anything else all."""
    op = scope.get("op")
    entity = scope.get("entity") if op == "in" else (scope.get("in") or {}).get("entity") if op == "is" else None
    if isinstance(entity, dict) and entity.get("type") == "Channel":
        return str(entity["id"])
    return None


def _principal_specific(est: dict[str, Any]) -> bool:
    """Whether the policy reads more of the principal than its group memberships.

    Conservative: any use of ``principal`` other than the left side of ``in`` / ``is`` (``principal ==``,
    ``principal.user_name``, ``principal has``, ``... == principal``) and any ``Agent::"..."`` literal count.
    """
    scope = est["principal"]
    if scope.get("op") == "==" or _mentions_agent(scope):
        return True
    return any(_reads_principal(condition["body"]) for condition in est.get("conditions", ()))


def _named_groups(node: Any) -> list[str]:
    """Every ``Group::"x"`` literal in the policy (scope and conditions)."""
    if isinstance(node, dict):
        found = [str(node["id"])] if node.get("type") == "Group" and "id" in node else []
        for value in node.values():
            found.extend(_named_groups(value))
        return found
    if isinstance(node, list):
        return [group for value in node for group in _named_groups(value)]
    return []


def _mentions_agent(node: Any) -> bool:
    if isinstance(node, dict):
        if node.get("type") == "Agent" and "id" in node:
            return True
        return any(_mentions_agent(value) for value in node.values())
    if isinstance(node, list):
        return any(_mentions_agent(value) for value in node)
    return False


def _reads_principal(node: Any) -> bool:
    if isinstance(node, dict):
        if node.get("Var") == "principal":
            return True
        for key in ("in", "is"):
            inner = node.get(key)
            if isinstance(inner, dict) and inner.get("left") == {"Var": "principal"}:
                rest = {k: v for k, v in inner.items() if k != "left"}
                return _reads_principal(rest) or _mentions_agent(rest)
        if node.get("__entity", {}).get("type") == "Agent":
            return True
        return any(_reads_principal(value) for value in node.values())
    if isinstance(node, list):
        return any(_reads_principal(value) for value in node)
    return False


def _statements(text: str) -> list[tuple[int, str]]:
    """Split a policy file into its statements (each ending at a top-level ``;``), with their first line, so a
    syntax error is reported at the policy it is in (Cedar's parser gives no position)."""
    out: list[tuple[int, str]] = []
    start, i, n = 0, 0, len(text)
    in_string = False
    while i < n:
        char = text[i]
        if in_string:
            if char == "\\":
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
            continue
        elif char == ";":
            out.append(_located(text, start, i + 1))
            start = i + 1
        i += 1
    rest = _located(text, start, n)
    if rest[1].strip() and _code(rest[1]):
        out.append(rest)
    return [(line, chunk) for line, chunk in out if _code(chunk)]


def _located(text: str, start: int, end: int) -> tuple[int, str]:
    chunk = text[start:end]
    # The line of the statement's first code character, not of the blank lines and comments before it.
    offset = start
    for raw in chunk.splitlines(keepends=True):
        if raw.strip() and not raw.strip().startswith("//"):
            break
        offset += len(raw)
    return text.count("\n", 0, offset) + 1, chunk


def _code(chunk: str) -> bool:
    return any(line.strip() and not line.strip().startswith("//") for line in chunk.splitlines())
