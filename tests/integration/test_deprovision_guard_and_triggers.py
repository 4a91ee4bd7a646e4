"""The mass-deletion guard and the pipeline's triggers, against the demo consoles over HTTP.

Guard (issue 4 item 6): past the configured share of the workforce within the window, sessions are still
killed and tokens still revoked at once, but ticket hand-over and seat deletion wait, visibly and alerting,
until an admin approves; then they complete. Triggers: a SCIM deactivation queues the run in its own
transaction, and an IdP repeating the deactivation does not start a second run.
"""

from __future__ import annotations

import asyncio

import httpx

from deploy.demo.seats_api import DELETED as SEAT_DELETED
from deploy.demo.seats_api import DISABLED as SEAT_DISABLED
from deploy.demo.tickets_api import REASSIGNED
from gateway.deprovision.plan import RunState, StepState
from gateway.timeutil import utcnow
from tests.components.echo_gateway import eventually
from tests.components.offboarding import offboarding_stack
from tests.integration.test_deprovision_pipeline import (
    FAST_RETRIES,
    effects_of,
    finished_run,
    gateway_of,
    give_access,
    steps_by_channel,
)

GUARD = FAST_RETRIES + "[deprovision.guard]\nmax_share = 0.25\nmin_agents = 1\nwindow_seconds = 3600\n"
TEAM = ["ann", "ben", "cat", "dan", "eve", "fay", "gus", "hal"]


async def test_a_mass_deletion_kills_sessions_and_revokes_at_once_but_holds_irreversible_steps_for_approval() -> None:
    async with offboarding_stack(dict.fromkeys(TEAM, 1), [*TEAM, "lead"], deprovision_toml=GUARD) as stack:
        stack.add_agents([*TEAM, "lead"], managers=dict.fromkeys(TEAM, "lead"))
        async with gateway_of(stack) as services:
            for user in TEAM[:4]:
                await give_access(services, user)
            # 9 agents, 25 %: the first two runs go through, the third trips the guard (3 > 0.25 * 9).
            for user in TEAM[:4]:
                await services.killer.deprovision(user, reason="broken sync", actor="t", source="scim")
            first = await finished_run(services, TEAM[0])
            assert first.state is RunState.DONE
            agent = await services.agents.find(TEAM[3])
            assert agent is not None and not agent.active

            async def held_but_revoked() -> bool:
                [run] = await services.pipeline.runs_of_agent(agent.id)
                steps = await steps_by_channel(services, run)
                return run.state is RunState.HELD and steps[("phone", "verify")].state is StepState.DONE

            await eventually(held_but_revoked, 20)
            [run] = await services.pipeline.runs_of_agent(agent.id)
            steps = await steps_by_channel(services, run)
            assert steps[("chat", "revoke")].state is StepState.DONE
            assert steps[("chat", "hand_over")].state is StepState.HELD
            assert steps[("mail", "hand_over")].state is StepState.HELD
            assert steps[("phone", "remove")].state is StepState.HELD
            phone = await stack.consoles["phone"].effects()
            assert effects_of(phone, TEAM[3]).count(SEAT_DISABLED) == 1
            assert SEAT_DELETED not in effects_of(phone, TEAM[3])
            assert REASSIGNED not in effects_of(await stack.consoles["chat"].effects(), TEAM[3])
            held = services.metrics.registry.get_sample_value("channelgate_deprovision_guard_holds_total")
            assert held == 2.0
            records = await services.audit._repository.tail(500)
            assert any(r.kind == "deprovision_held" and r.agent_name == TEAM[3] for r in records)

            async with httpx.AsyncClient() as http:
                approved = await http.post(
                    f"{stack.gateway_url}/.channelgate/admin/deprovision/approve",
                    json={"all": True},
                    headers={"Authorization": f"Bearer {stack.admin_token}"},
                )
            assert approved.status_code == 200 and run.id in approved.json()["approved"]
            assert (await finished_run(services, TEAM[3])).state is RunState.DONE
            phone = await stack.consoles["phone"].effects()
            assert effects_of(phone, TEAM[3]).count(SEAT_DELETED) == 1
            records = await services.audit._repository.tail(500)
            assert any(r.kind == "deprovision_approved" and run.id in (r.detail or {}).get("runs", []) for r in records)


async def test_a_scim_deactivation_queues_one_run_and_a_repeated_one_joins_it() -> None:
    async with offboarding_stack({"alice": 1}, ["alice", "carol"], deprovision_toml=FAST_RETRIES) as stack:
        ids = stack.add_agents(["alice", "carol"], managers={"alice": "carol"})
        async with gateway_of(stack) as services:
            token = await services.scim_tokens.create("entra", utcnow())
            body = {
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
            }
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}
            async with httpx.AsyncClient() as http:
                for _ in range(3):
                    response = await http.patch(
                        f"{stack.gateway_url}/scim/v2/Users/{ids['alice']}", json=body, headers=headers
                    )
                    assert response.status_code in (200, 204), response.text
                    await asyncio.sleep(0.05)
            run = await finished_run(services, "alice")
            assert run.state is RunState.DONE and run.source == "scim"
            assert len(await services.pipeline.runs_of_agent(ids["alice"])) == 1
            moved = [e["detail"] for e in await stack.consoles["mail"].effects() if e["effect"] == REASSIGNED]
            assert moved == ["T-alice-0 -> assignee carol"]
