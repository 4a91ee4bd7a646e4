"""Research item 27, in part: a Hypothesis state machine over provisioning, sign-ins, SCIM deactivation,
reactivation and deletion, and admin deprovisioning, against the real gateway (SQLite, memory sessions).

After every step, every session is checked through the gateway itself (``GET /`` with its cookie): a session
made before its agent's last disable or deletion is dead, one made since is alive (ASVS 7.4.2: disabling ends
every session; a reactivation brings none back), and SCIM answers each agent's state. A sign-in stores the
session the OIDC callback would store for an active agent (the callback's own checks are in tests/integration/
test_login_*). LDAP and faults are left to their own suites (docs/security-tests.md, item 27).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway.sessions.base import SessionData
from tests.security.api_gateway import ThreadedGateway, threaded_gateway

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
NAMES = ("ann", "ben", "cal")
SERIAL = itertools.count()

pytestmark = [pytest.mark.timeout(120)]


@dataclass
class Agent:
    id: str
    active: bool = True
    deleted: bool = False


@dataclass
class SignedIn:
    agent_id: str
    cookie: str
    alive: bool = True


class AccessMachine(RuleBasedStateMachine):
    api: ThreadedGateway
    http: requests.Session

    def __init__(self) -> None:
        super().__init__()
        self.agents: dict[str, Agent] = {}
        self.sessions: list[SignedIn] = []

    def _scim(self, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.api.scim_token}", "Content-Type": "application/scim+json"}
        return self.http.request(method, f"{self.api.url}/scim/v2{path}", json=body, headers=headers, timeout=15)

    def _live(self, name: str) -> Agent | None:
        agent = self.agents.get(name)
        return agent if agent is not None and not agent.deleted else None

    def _ended(self, agent: Agent) -> None:
        for session in self.sessions:
            if session.agent_id == agent.id:
                session.alive = False

    def _pick(self, data: st.DataObject, *, active: bool | None = None) -> tuple[str, Agent]:
        eligible = sorted(
            name for name in NAMES if (agent := self._live(name)) and (active is None or agent.active is active)
        )
        name = data.draw(st.sampled_from(eligible))
        return name, self.agents[name]

    def _provision(self, name: str) -> None:
        # The gateway outlives each example: every provisioning gets a userName of its own.
        response = self._scim("POST", "/Users", {"schemas": [USER], "userName": f"{name}-{next(SERIAL)}"})
        assert response.status_code == 201, response.text
        self.agents[name] = Agent(response.json()["id"])

    @initialize()
    def provision_everyone(self) -> None:
        for name in NAMES:
            self._provision(name)

    @precondition(lambda self: any(self._live(name) is None for name in NAMES))
    @rule(data=st.data())
    def rehire(self, data: st.DataObject) -> None:
        self._provision(data.draw(st.sampled_from([name for name in NAMES if self._live(name) is None])))

    @precondition(lambda self: any((agent := self._live(name)) and agent.active for name in NAMES))
    @rule(data=st.data())
    def sign_in(self, data: st.DataObject) -> None:
        name, agent = self._pick(data, active=True)
        session_data = SessionData(agent.id, name, "https://idp.example", f"{name}-sub")
        session = self.api.run(self.api.services.sessions.create(session_data, time.time()))
        self.sessions.append(SignedIn(agent.id, session.id))

    @precondition(lambda self: any(self._live(name) for name in NAMES))
    @rule(data=st.data(), active=st.booleans(), entra=st.booleans())
    def set_active(self, data: st.DataObject, active: bool, entra: bool) -> None:
        _, agent = self._pick(data)
        operation = (
            {"op": "Replace", "path": "active", "value": str(active)}
            if entra
            else {"op": "replace", "value": {"active": active}}
        )
        response = self._scim("PATCH", f"/Users/{agent.id}", {"schemas": [PATCH_OP], "Operations": [operation]})
        assert response.status_code in (200, 204), response.text
        if not active:
            self._ended(agent)
        agent.active = active

    @precondition(lambda self: any(self._live(name) for name in NAMES))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        _, agent = self._pick(data)
        assert self._scim("DELETE", f"/Users/{agent.id}").status_code == 204
        assert self._scim("DELETE", f"/Users/{agent.id}").status_code == 404
        self._ended(agent)
        agent.deleted = True

    @precondition(lambda self: any(self._live(name) for name in NAMES))
    @rule(data=st.data())
    def deprovision_by_admin(self, data: st.DataObject) -> None:
        _, agent = self._pick(data)
        response = self.http.post(
            f"{self.api.url}/.channelgate/admin/agents/{agent.id}/deprovision",
            json={"reason": "left"},
            headers={"Authorization": f"Bearer {self.api.admin_token}"},
            timeout=15,
        )
        assert response.status_code == 200, response.text
        self._ended(agent)
        agent.active = False

    @invariant()
    def every_session_is_alive_exactly_when_no_disable_came_after_it(self) -> None:
        for session in self.sessions:
            home = self.http.get(
                f"{self.api.url}/", cookies={"channelgate": session.cookie}, allow_redirects=False, timeout=15
            )
            assert home.status_code == (200 if session.alive else 302), (session, home.status_code)

    @invariant()
    def scim_answers_each_agents_state(self) -> None:
        for agent in self.agents.values():
            read = self._scim("GET", f"/Users/{agent.id}")
            if agent.deleted:
                assert read.status_code == 404
            else:
                assert read.status_code == 200 and read.json()["active"] is agent.active


def test_sessions_end_with_every_disable_and_deletion_and_never_come_back() -> None:
    with threaded_gateway() as api, requests.Session() as http:
        AccessMachine.api, AccessMachine.http = api, http
        run_state_machine_as_test(
            AccessMachine,
            settings=settings(
                max_examples=20,
                stateful_step_count=15,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
