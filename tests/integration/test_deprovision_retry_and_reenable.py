"""An operator's retry and an agent made active again, against the demo consoles over HTTP (seats admin API,
ticket API): a retry gives dead steps a fresh budget and nothing more (a held run stays held, its seat deletion
waits for an approval), and finishes the run; a step that crashes its worker every time is dead-lettered by the
claim; an agent re-enabled over SCIM while its run still retries keeps its seat, its tickets and its access."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import timedelta

import httpx

from deploy.demo.seats_api import DELETED as SEAT_DELETED
from deploy.demo.seats_api import DISABLED as SEAT_DISABLED
from deploy.demo.tickets_api import REASSIGNED
from gateway.deprovision.plan import RunState, StepState
from gateway.deprovision.results import budget
from gateway.services import Services, open_core
from gateway.settings import load_settings
from gateway.timeutil import utcnow
from tests.components.echo_gateway import eventually
from tests.components.offboarding import offboarding_stack
from tests.integration.test_deprovision_pipeline import (
    FAST_RETRIES,
    effects_of,
    finished_run,
    gateway_of,
    give_access,
    pipeline_metrics,
    steps_by_channel,
)

GUARD = (
    "retry_base_seconds = 0.05\nretry_max_seconds = 0.2\npoll_seconds = 0.1\nlease_seconds = 10\nmax_attempts = 2\n"
    "[deprovision.guard]\nmax_share = 0.25\nmin_agents = 1\nwindow_seconds = 3600\n"
)
TEAM = ["ann", "ben", "cat", "dan", "eve", "fay", "gus", "hal"]


async def _scim_user(services: Services, gateway_url: str, agent_id: str) -> tuple[str, dict[str, str]]:
    """The agent's SCIM resource and the headers an IdP (a new SCIM token) sends it with."""
    token = await services.scim_tokens.create("entra", utcnow())
    return f"{gateway_url}/scim/v2/Users/{agent_id}", {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/scim+json",
    }


def patch_active(value: str) -> dict[str, object]:
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": value}],
    }


async def test_retrying_a_dead_revoke_of_a_held_run_keeps_its_seat_deletion_waiting_for_approval() -> None:
    async with offboarding_stack(dict.fromkeys(TEAM, 1), [*TEAM, "lead"], deprovision_toml=GUARD) as stack:
        stack.add_agents([*TEAM, "lead"], managers=dict.fromkeys(TEAM, "lead"))
        async with gateway_of(stack) as services:
            for user in TEAM[:4]:
                await give_access(services, user)
            phone = stack.consoles["phone"]
            phone.faults.set("unavailable", "/admin/")  # the seats admin API is down
            for user in TEAM[:4]:
                await services.killer.deprovision(user, reason="broken sync", actor="t", source="scim")
            agent = await services.agents.find(TEAM[3])
            assert agent is not None

            async def held_with_phone_dead() -> bool:
                [run] = await services.pipeline.runs_of_agent(agent.id)
                steps = await steps_by_channel(services, run)
                return run.state is RunState.HELD and steps[("phone", "remove")].state is StepState.BLOCKED

            await eventually(held_with_phone_dead, 30)
            [run] = await services.pipeline.runs_of_agent(agent.id)
            assert (await steps_by_channel(services, run))[("phone", "revoke")].state is StepState.DEAD

            phone.faults.set("ok")
            async with httpx.AsyncClient() as http:
                retried = await http.post(
                    f"{stack.gateway_url}/.channelgate/admin/deprovision/runs/{run.id}/retry",
                    headers={"Authorization": f"Bearer {stack.admin_token}"},
                )
            assert retried.status_code == 200, retried.text

            async def phone_verified() -> bool:
                steps = await steps_by_channel(services, run)
                return steps[("phone", "verify")].state is StepState.DONE

            await eventually(phone_verified, 30)
            await asyncio.sleep(0.5)
            steps = await steps_by_channel(services, run)
            after = await services.pipeline.get_run(run.id)
            assert after is not None and after.state is RunState.HELD and after.approved_by is None
            assert steps[("phone", "remove")].state is StepState.HELD
            assert SEAT_DELETED not in effects_of(await phone.effects(), TEAM[3])


async def test_a_retry_after_a_dead_revoke_a_done_verify_and_a_failed_removal_finishes_the_run() -> None:
    async with offboarding_stack({"alice": 1}, ["alice", "carol"], deprovision_toml=FAST_RETRIES) as stack:
        stack.add_agents(["alice", "carol"], managers={"alice": "carol"})
        async with gateway_of(stack) as services:
            await give_access(services, "alice")
            await services.killer.deprovision("alice", reason="left", actor="t", source="cli")
            run = await finished_run(services, "alice")
            # phone's revoke dead-lettered, its verification then found no access and the deletion was refused.
            with contextlib.closing(sqlite3.connect(stack.database_path)) as db, db:
                db.execute("UPDATE deprovision_runs SET state = 'attention' WHERE id = ?", (run.id,))
                for step, state in (("revoke", "dead"), ("remove", "failed")):
                    db.execute(
                        "UPDATE deprovision_steps SET state = ? WHERE run_id = ? AND channel = 'phone' AND step = ?",
                        (state, run.id, step),
                    )
            async with httpx.AsyncClient() as http:
                retried = await http.post(
                    f"{stack.gateway_url}/.channelgate/admin/deprovision/runs/{run.id}/retry",
                    headers={"Authorization": f"Bearer {stack.admin_token}"},
                )
            assert retried.status_code == 200 and retried.json()["steps_requeued"] == 1, retried.text
            after = await finished_run(services, "alice")
            steps = await steps_by_channel(services, run)
            assert after.id == run.id and after.state is RunState.DONE
            assert [steps[("phone", s)].state for s in ("revoke", "verify", "remove")] == [StepState.DONE] * 3


async def test_a_step_crashing_its_worker_every_time_is_dead_lettered_instead_of_claimed_past_its_budget() -> None:
    async with offboarding_stack(
        {"alice": 1}, ["alice", "carol"], deprovision_toml=FAST_RETRIES + "max_attempts = 2\n"
    ) as stack:
        ids = stack.add_agents(["alice", "carol"], managers={"alice": "carol"})
        core = open_core(load_settings(stack.config_path, environ={}))
        try:
            await core.killer.deprovision("alice", reason="left", actor="t", source="cli")
            [run] = await core.pipeline.runs_of_agent(ids["alice"])
            lease = timedelta(seconds=core.settings.deprovision.lease_seconds)
            now, seen = utcnow(), []
            for crash in range(4):  # a replica claims, starts the chat revoke and is killed; the lease lapses
                claimed = await core.pipeline.claim(
                    f"replica-{crash}", now, now + lease, 100, budget=budget(core.settings.deprovision)
                )
                seen += [s.attempts for s, _ in claimed if (s.channel, s.step.value) == ("chat", "revoke")]
                now += lease + timedelta(seconds=1)
            steps = await steps_by_channel(core, run)
            assert seen == [1, 2] and steps[("chat", "revoke")].state is StepState.DEAD
            records = await core.audit._repository.tail(200)
            assert any(r.kind == "deprovision_step" and r.channel == "chat" and r.decision == "dead" for r in records)
        finally:
            await core.close()


async def test_an_agent_re_enabled_over_scim_keeps_its_seat_and_tickets_although_its_run_was_retrying() -> None:
    """The run ends superseded (never done), the admin API shows it so and refuses to retry it, and its record
    names what it had carried out before (the mail console's logout) for a person to undo."""
    async with offboarding_stack(
        {"alice": 1}, ["alice", "carol"], deprovision_toml=FAST_RETRIES + "max_attempts = 1000\n"
    ) as stack:
        ids = stack.add_agents(["alice", "carol"], managers={"alice": "carol"})
        async with gateway_of(stack) as services:
            await give_access(services, "alice")
            phone, chat = stack.consoles["phone"], stack.consoles["chat"]
            phone.faults.set("unavailable", "/admin/")
            chat.faults.set("unavailable", "/api/")
            url, headers = await _scim_user(services, stack.gateway_url, ids["alice"])
            async with httpx.AsyncClient() as http:
                response = await http.patch(url, json=patch_active("False"), headers=headers)
                assert response.status_code in (200, 204), response.text
                [run] = await services.pipeline.runs_of_agent(ids["alice"])

                async def retrying() -> bool:
                    steps = await steps_by_channel(services, run)
                    return bool(
                        steps[("phone", "revoke")].attempts >= 2 and steps[("mail", "revoke")].state is StepState.DONE
                    )

                await eventually(retrying, 20)
                response = await http.patch(url, json=patch_active("True"), headers=headers)
                assert response.status_code in (200, 204), response.text
                admin = {"Authorization": f"Bearer {stack.admin_token}"}
                shown = await http.get(f"{stack.gateway_url}/.channelgate/admin/agents/{ids['alice']}", headers=admin)
                retried = await http.post(
                    f"{stack.gateway_url}/.channelgate/admin/deprovision/runs/{run.id}/retry", headers=admin
                )
            phone.faults.set("ok")
            chat.faults.set("ok")
            await asyncio.sleep(2)
            agent = await services.agents.get(ids["alice"])
            assert agent is not None and agent.active
            after = await services.pipeline.get_run(run.id)
            assert after is not None and after.state is RunState.SUPERSEDED
            [listed] = shown.json()["deprovisioning"]
            assert (listed["run_id"], listed["state"]) == (run.id, "superseded")
            assert (retried.status_code, retried.json()["error"]) == (409, "run_superseded")
            steps = await steps_by_channel(services, run)
            assert steps[("phone", "revoke")].state is StepState.SUPERSEDED
            assert steps[("phone", "remove")].state is StepState.SUPERSEDED
            assert steps[("mail", "revoke")].state is StepState.DONE  # carried out: it stays so
            seen = effects_of(await phone.effects(), "alice")
            assert SEAT_DISABLED not in seen and SEAT_DELETED not in seen
            assert REASSIGNED not in effects_of(await chat.effects(), "alice")
            records = await services.audit._repository.tail(500)
            [record] = [r for r in records if r.kind == "deprovision" and r.decision == "superseded"]
            assert record.agent_id == ids["alice"] and record.detail is not None
            assert {"channel": "mail", "step": "revoke"} in record.detail["carried_out"]
            assert not any(r.kind == "deprovision_complete" for r in records)


async def test_an_agent_re_enabled_after_its_run_ended_in_attention_clears_the_attention_and_its_alert() -> None:
    """The dead revocation no longer keeps an active agent's access from ending: the run ends superseded, the
    attention count an operator alerts on drops to 0, and the run is never retried."""
    async with offboarding_stack(
        {"alice": 1}, ["alice", "carol"], deprovision_toml=FAST_RETRIES + "max_attempts = 2\n"
    ) as stack:
        ids = stack.add_agents(["alice", "carol"], managers={"alice": "carol"})
        async with gateway_of(stack) as services:
            await give_access(services, "alice")
            stack.consoles["chat"].faults.set("unavailable", "/oauth/")
            url, headers = await _scim_user(services, stack.gateway_url, ids["alice"])
            admin = {"Authorization": f"Bearer {stack.admin_token}"}
            async with httpx.AsyncClient() as http:
                response = await http.patch(url, json=patch_active("False"), headers=headers)
                assert response.status_code in (200, 204), response.text
                run = await finished_run(services, "alice")
                assert run.state is RunState.ATTENTION
                assert (await pipeline_metrics(stack.gateway_url))[("runs", "attention")] == 1.0

                response = await http.patch(url, json=patch_active("True"), headers=headers)
                assert response.status_code in (200, 204), response.text
                retried = await http.post(
                    f"{stack.gateway_url}/.channelgate/admin/deprovision/runs/{run.id}/retry", headers=admin
                )
            assert (retried.status_code, retried.json()["error"]) == (409, "run_superseded")
            after = await services.pipeline.get_run(run.id)
            assert after is not None and after.state is RunState.SUPERSEDED
            counted = await pipeline_metrics(stack.gateway_url)
            assert counted[("runs", "attention")] == 0.0 and counted[("runs", "superseded")] == 1.0
            steps = await steps_by_channel(services, run)
            assert steps[("chat", "revoke")].state is StepState.DEAD  # as it ended: the history stays
            records = await services.audit._repository.tail(500)
            [record] = [r for r in records if r.kind == "deprovision" and r.decision == "superseded"]
            assert record.detail is not None and {"channel": "phone", "step": "remove"} in record.detail["carried_out"]
