"""The policy decision point: Cedar (cedarpy) evaluates a validated policy set for one query.

Cedar's semantics are what we want from a gateway: deny unless a permit matches, and any matching forbid wins
over every permit. Three things keep a decision within microseconds (docs/benchmarks.md §7):

* The set is sliced per channel when it is loaded: a request to ``chat`` is evaluated against the policies whose
  scope is ``resource in Channel::"chat"`` plus the channel-wide ones, not all of them (Cedar is linear in the
  number of policies).
* Each request carries only the entities it needs (the agent with its groups as parents, the resource, the
  action), a few hundred bytes of JSON, instead of a directory-sized entity store.
* A decision is a pure function of the query, so answers are kept in a bounded map. Unless a policy reads the
  principal's identity or attributes (``LoadedPolicy.principal_specific``), agents with the same groups share
  answers, and of the groups only those a policy names or the route allows count. Of the context, the key holds
  what the channel's policies can tell apart (policies/context_keys.py:
  the clock only as "before 9:00 / working hours / after 18:00" when those are the thresholds). Nothing can go
  stale: every input that can change an answer is in the key (groups, route, data class, action, context), and a
  reloaded policy set gets a new engine with an empty map. A group change is seen by the very next request
  (ASVS 8.3.2).

A policy that fails to evaluate (Cedar skips it and reports an error) refuses the request: a skipped forbid must
never turn into an allow.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass

import cedarpy

from policies.context_keys import ContextKey, context_key
from policies.decision import (
    DEFAULT_DENY,
    POLICY_ERROR,
    Context,
    Decision,
    Query,
    Reason,
    Target,
)
from policies.loader import PolicyBundle, policy_set_json

#: The action hierarchy of the schema, sent with every request (Cedar needs action entities' parents at
#: evaluation time unless the schema is passed, which costs more per call).
_ACTION_PARENTS = [{"type": "Action", "id": "open"}]
#: Cedar names the policy that failed in each evaluation error: "error while evaluating policy `overflow`: ...".
_FAILED_POLICY = re.compile(r"policy `([^`]+)`")
#: One number per engine built in this process (``PolicyEngine.id``).
_ENGINE_IDS = itertools.count(1)


@dataclass(frozen=True, slots=True)
class EngineStats:
    decisions: int
    evaluations: int
    cached: int


class PolicyEngine:
    """Decides queries against one immutable policy bundle."""

    def __init__(self, bundle: PolicyBundle, *, cache_size: int = 65_536) -> None:
        """``cache_size`` decisions are remembered; 0 remembers none (every query is evaluated)."""
        self.bundle = bundle
        #: Unique per engine, even for a reload of the same files; every decision carries it (``engine_id``).
        self.id = next(_ENGINE_IDS)
        self._cache_size = cache_size
        self._share_between_agents = not bundle.principal_specific
        self._has_group_rule = any(p.id == "route-groups" for p in bundle.policies)
        everywhere = [p for p in bundle.policies if p.channel is None]
        self._default_slice = cedarpy.PolicySet.from_json_str(policy_set_json(everywhere))
        self._default_key = context_key(p.est for p in everywhere)
        self._slices = {
            channel: cedarpy.PolicySet.from_json_str(policy_set_json(bundle.for_channel(channel)))
            for channel in bundle.channels()
        }
        self._keys: dict[str, ContextKey] = {
            channel: context_key(p.est for p in bundle.for_channel(channel)) for channel in bundle.channels()
        }
        self._default_groups = frozenset(g for p in everywhere for g in p.groups)
        self._groups = {
            channel: frozenset(g for p in bundle.for_channel(channel) for g in p.groups)
            for channel in bundle.channels()
        }
        self._reasons = {p.id: p.reason for p in bundle.policies if p.reason}
        self._decisions: dict[tuple[object, ...], Decision] = {}
        self._resources: dict[Target, str] = {}
        self._contexts: dict[Context, str] = {}
        self.evaluations = 0
        self.decisions = 0

    @property
    def digest(self) -> str:
        return self.bundle.digest

    def stats(self) -> EngineStats:
        return EngineStats(self.decisions, self.evaluations, len(self._decisions))

    def decide(self, query: Query) -> Decision:
        self.decisions += 1
        subject = query.subject
        target = query.target
        if self._share_between_agents:
            who: tuple[str, str] = ("", "")
            # Only the groups a policy of the slice names, or the route allows, can change the answer.
            named = self._groups.get(target.channel, self._default_groups)
            groups = frozenset(g for g in subject.groups if g in named or g in target.allowed_groups)
        else:
            who, groups = (subject.agent_id, subject.user_name), subject.groups
        context = self._keys.get(target.channel, self._default_key)(query.context)
        key = (who, groups, target, query.action, context)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self.evaluate(query)
            if not self._cache_size:
                return decision
            if len(self._decisions) >= self._cache_size:
                # Oldest first (dicts keep insertion order): a bounded map without an LRU's bookkeeping.
                del self._decisions[next(iter(self._decisions))]
            self._decisions[key] = decision
        return decision

    def evaluate(self, query: Query) -> Decision:
        """One Cedar evaluation, uncached (``decide`` remembers its answers)."""
        self.evaluations += 1
        target = query.target
        request = {
            "principal": {"type": "Agent", "id": query.subject.agent_id},
            "action": {"type": "Action", "id": query.action},
            "resource": {"type": "Resource", "id": target.resource_id},
            "context": self._context_json(query.context),
        }
        policies = self._slices.get(target.channel, self._default_slice)
        result = cedarpy.is_authorized(request, policies, self._entities_json(query))
        diagnostics = result.diagnostics
        if diagnostics.errors:
            # Named by the policies that failed: the permits in ``reasons`` matched but did not decide.
            failed = sorted({m.group(1) for e in diagnostics.errors if (m := _FAILED_POLICY.search(e))})
            return Decision(False, frozenset({Reason.POLICY_ERROR}), (POLICY_ERROR, *failed), engine_id=self.id)
        ids = tuple(sorted(diagnostics.reasons))
        if result.allowed:
            return Decision(True, frozenset({Reason.PERMITTED}), ids, engine_id=self.id)
        if ids:
            messages = tuple(dict.fromkeys(self._reasons[i] for i in ids if i in self._reasons))
            return Decision(False, frozenset({Reason.FORBIDDEN}), ids, messages=messages, engine_id=self.id)
        return self._default_deny(query)

    def _default_deny(self, query: Query) -> Decision:
        allowed = query.target.allowed_groups
        missing: tuple[str, ...] = ()
        if not self._has_group_rule:
            reason = Reason.NO_PERMIT
        elif not allowed:
            reason = Reason.ROUTE_CLOSED
        elif not set(allowed) & query.subject.groups:
            reason, missing = Reason.GROUP_MISSING, allowed
        else:
            reason = Reason.NO_PERMIT
        return Decision(False, frozenset({reason}), (DEFAULT_DENY,), missing_groups=missing, engine_id=self.id)

    def _entities_json(self, query: Query) -> str:
        subject = query.subject
        agent = {
            "uid": {"type": "Agent", "id": subject.agent_id},
            "attrs": {"user_name": subject.user_name},
            "parents": [{"type": "Group", "id": group} for group in sorted(subject.groups)],
        }
        action = {"uid": {"type": "Action", "id": query.action}, "attrs": {}, "parents": _ACTION_PARENTS}
        return "[" + json.dumps(agent) + "," + json.dumps(action) + "," + self._resource_json(query.target) + "]"

    def _resource_json(self, target: Target) -> str:
        text = self._resources.get(target)
        if text is None:
            resource = {
                "uid": {"type": "Resource", "id": target.resource_id},
                "attrs": {
                    "channel": target.channel,
                    "prefix": target.prefix,
                    "pii": target.pii,
                    "allowed_groups": [{"__entity": {"type": "Group", "id": g}} for g in target.allowed_groups],
                },
                "parents": [{"type": "Channel", "id": target.channel}],
            }
            text = self._resources[target] = json.dumps(resource)
        return text

    def _context_json(self, context: Context) -> str:
        text = self._contexts.get(context)
        if text is None:
            if len(self._contexts) >= 4096:
                self._contexts.clear()
            text = self._contexts[context] = json.dumps(
                {
                    "network": context.network,
                    "mfa": context.mfa,
                    "acr": context.acr,
                    "amr": list(context.amr),
                    "device": context.device,
                    "time": {
                        "weekday": context.time.weekday,
                        "hour": context.time.hour,
                        "minute_of_day": context.time.minute_of_day,
                    },
                    "via": context.via,
                }
            )
        return text
