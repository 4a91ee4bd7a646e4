"""The deprovisioning pipeline end to end, against the demo consoles over HTTP: one deprovision revokes the agent's
OAuth tokens (RFC 7009), deletes the seat, logs the console session out, hands open tickets to the manager,
verifies zero access (RFC 7662, seat status, session list) and writes a receipt per step; a channel that refuses
connections, answers 503 or hangs does not hold up the others, is retried until it comes back, and lands in the
dead letters (visible, alerting, never "done") when the budget is spent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.base import AgentRef, UpstreamRequest
from connectors.secret import Secret
from deploy.demo.form_login import LOGGED_OUT
from deploy.demo.seats_api import DELETED as SEAT_DELETED
from deploy.demo.tickets_api import REASSIGNED
from gateway.deprovision.plan import RunState, StepState
from gateway.services import Services
from gateway.settings import load_settings
from gateway.storage.pipeline import RunRecord
from tests.components.asgi_server import bound_socket
from tests.components.echo_gateway import eventually
from tests.components.inprocess import running_gateway
from tests.components.offboarding import PASSWORD, OffboardingStack, offboarding_stack

FAST_RETRIES = "retry_base_seconds = 0.05\nretry_max_seconds = 0.2\npoll_seconds = 0.1\nlease_seconds = 10\n"


@contextlib.asynccontextmanager
async def gateway_of(stack: OffboardingStack) -> AsyncIterator[Services]:
    """The gateway of ``stack`` served in this process on its configured port."""
    sock = bound_socket(stack.gateway_port)
    try:
        async with running_gateway(load_settings(stack.config_path, environ={}), sock) as services:
            yield services
    finally:
        sock.close()


async def give_access(services: Services, user_name: str) -> AgentRef:
    """What the agent's first requests through the gateway leave behind: an OAuth token at chat, a seat at phone,
    a console session at mail (each obtained by the connector exactly as the proxy's ``prepare`` does)."""
    agent = await services.agents.find(user_name)
    assert agent is not None
    ref = AgentRef(agent_id=agent.id, user_name=agent.user_name, email=agent.email)
    await services.connector_contexts["mail"].secrets.put(agent.id, "password", Secret(PASSWORD))
    for channel in ("chat", "phone", "mail"):
        await services.connectors[channel].prepare(ref, UpstreamRequest("GET", f"http://console/{channel}", []))
    return ref


async def finished_run(services: Services, user_name: str, timeout: float = 30) -> RunRecord:
    agent = await services.agents.find(user_name)
    assert agent is not None

    async def finished() -> RunRecord | None:
        runs = await services.pipeline.runs_of_agent(agent.id)
        return runs[0] if runs and runs[0].state in (RunState.DONE, RunState.ATTENTION) else None

    run: RunRecord = await eventually(finished, timeout)
    return run


async def steps_by_channel(services: Services, run: RunRecord) -> dict[tuple[str, str], Any]:
    return {(s.channel, s.step.value): s for s in await services.pipeline.steps_of([run.id])}


async def receipts(services: Services, run: RunRecord) -> list[Any]:
    records = await services.audit._repository.tail(1000)
    return [r for r in records if r.detail and r.detail.get("run") == run.id]


def effects_of(entries: list[dict[str, Any]], subject: str) -> list[str]:
    return [e["effect"] for e in entries if e["subject"] == subject]


async def test_one_deprovision_revokes_hands_over_verifies_and_removes_at_every_channel_with_receipts() -> None:
    async with offboarding_stack({"alice": 3, "bob": 1}, ["alice", "bob", "carol"]) as stack:
        stack.add_agents(["alice", "bob", "carol"], managers={"alice": "carol"})
        async with gateway_of(stack) as services:
            await give_access(services, "alice")
            await give_access(services, "bob")
            result = await services.killer.deprovision("alice", reason="left the company", actor="t", source="cli")
            assert result.run is not None
            run = await finished_run(services, "alice")
            steps = await steps_by_channel(services, run)
            assert run.state is RunState.DONE, {k: (s.state, s.detail) for k, s in steps.items()}
            assert set(steps) == {
                ("chat", "revoke"), ("chat", "hand_over"), ("chat", "verify"),
                ("phone", "revoke"), ("phone", "verify"), ("phone", "remove"),
                ("mail", "revoke"), ("mail", "hand_over"), ("mail", "verify"), ("mail", "remove"),
            }  # fmt: skip
            assert all(s.state is StepState.DONE for s in steps.values())
            # Every step left a receipt in the access log, and the run a summary.
            kinds = [(r.kind, r.channel, (r.detail or {}).get("step")) for r in await receipts(services, run)]
            for channel, step in steps:
                assert ("deprovision_step", channel, step) in kinds
            assert ("deprovision_complete", None, None) in kinds
            # The consoles saw the effects, for alice only; bob keeps his access and tickets.
            chat = await stack.consoles["chat"].effects()
            phone = await stack.consoles["phone"].effects()
            mail = await stack.consoles["mail"].effects()
            assert "token_revoked" in effects_of(chat, "alice")
            assert "token_revoked" not in effects_of(chat, "bob")
            assert effects_of(phone, "alice").count(SEAT_DELETED) == 1
            assert SEAT_DELETED not in effects_of(phone, "bob")
            assert effects_of(mail, "alice").count(LOGGED_OUT) == 1
            for console in (chat, mail):
                moved = [e["detail"] for e in console if e["effect"] == REASSIGNED]
                assert sorted(moved) == [f"T-alice-{n} -> assignee carol" for n in range(3)]


async def test_a_successor_named_by_the_trigger_takes_the_tickets_and_without_one_they_go_to_the_queue() -> None:
    async with offboarding_stack({"alice": 1, "bob": 2}, ["alice", "bob", "carol", "dave"]) as stack:
        stack.add_agents(["alice", "bob", "carol", "dave"], managers={"alice": "carol"})
        async with gateway_of(stack) as services:
            await services.killer.deprovision("alice", reason="left", actor="t", source="cli", successor="dave")
            await services.killer.deprovision("bob", reason="left", actor="t", source="cli")
            for user in ("alice", "bob"):
                assert (await finished_run(services, user)).state is RunState.DONE
            moved = [e["detail"] for e in await stack.consoles["mail"].effects() if e["effect"] == REASSIGNED]
            assert "T-alice-0 -> assignee dave" in moved
            assert sorted(d for d in moved if d.startswith("T-bob-")) == [
                "T-bob-0 -> queue mail-unassigned", "T-bob-1 -> queue mail-unassigned"
            ]  # fmt: skip


async def test_a_successor_disabled_while_the_hand_over_retries_gets_nothing_and_the_receipt_says_why() -> None:
    toml = FAST_RETRIES + "max_attempts = 1000\n"
    async with offboarding_stack({"alice": 2}, ["alice", "carol"], deprovision_toml=toml) as stack:
        stack.add_agents(["alice", "carol"], managers={"alice": "carol"})
        async with gateway_of(stack) as services:
            mail = stack.consoles["mail"]
            mail.faults.set("unavailable", "/api/")  # the mail ticket API answers 503 for a while
            await services.killer.deprovision("alice", reason="left", actor="t", source="cli")
            agent = await services.agents.find("alice")
            assert agent is not None

            async def hand_over(channel: str) -> Any:
                [run] = await services.pipeline.runs_of_agent(agent.id)
                return (await steps_by_channel(services, run))[(channel, "hand_over")]

            async def mail_attempts() -> int:
                step = await hand_over("mail")
                assert step.state is StepState.PENDING
                return int(step.attempts)

            async def chat_done_and_mail_retrying() -> bool:
                return bool((await hand_over("chat")).state is StepState.DONE and await mail_attempts() >= 1)

            await eventually(chat_done_and_mail_retrying, 30)
            # Meanwhile carol, alice's manager and so her successor, leaves too.
            await services.killer.deprovision("carol", reason="left", actor="t", source="cli")
            # Once a later attempt is claimed, none that read the directory before carol left is still running.
            seen = await mail_attempts()

            async def claimed_again() -> bool:
                return await mail_attempts() > seen

            await eventually(claimed_again, 30)
            mail.faults.set("ok")
            run = await finished_run(services, "alice")
            steps = await steps_by_channel(services, run)
            assert run.state is RunState.DONE, {k: (s.state, s.detail) for k, s in steps.items()}
            moved = [e["detail"] for e in await mail.effects() if e["effect"] == REASSIGNED]
            assert sorted(moved) == ["T-alice-0 -> queue mail-unassigned", "T-alice-1 -> queue mail-unassigned"]
            assert steps[("mail", "hand_over")].detail == (
                "2 open tickets moved to queue 'mail-unassigned' (no successor); the manager carol is disabled"
            )
            # chat's hand-over had gone through while carol was still active.
            assert steps[("chat", "hand_over")].detail == "2 open tickets handed to carol"


@pytest.mark.parametrize("fault", ["refused", "unavailable", "hang"])
async def test_a_failing_channel_does_not_hold_up_the_others_and_completes_when_it_comes_back(fault: str) -> None:
    async with offboarding_stack(
        {"alice": 2}, ["alice", "carol"], deprovision_toml=FAST_RETRIES + "max_attempts = 1000\n"
    ) as stack:
        stack.add_agents(["alice", "carol"], managers={"alice": "carol"})
        async with gateway_of(stack) as services:
            await give_access(services, "alice")
            phone = stack.consoles["phone"]
            if fault == "refused":
                await phone.stop()
            else:
                phone.faults.set("unavailable" if fault == "unavailable" else "hang")
            await services.killer.deprovision("alice", reason="left", actor="t", source="cli")
            agent = await services.agents.find("alice")
            assert agent is not None

            async def others_done() -> bool:
                [run] = await services.pipeline.runs_of_agent(agent.id)
                steps = await steps_by_channel(services, run)
                others = [s for (channel, _), s in steps.items() if channel != "phone"]
                return all(s.state is StepState.DONE for s in others) and steps[("phone", "revoke")].attempts >= 2

            await eventually(others_done, 30)
            [run] = await services.pipeline.runs_of_agent(agent.id)
            assert run.state is RunState.RUNNING  # never reported done while a channel is still failing
            if fault == "refused":
                await phone.start()
            else:
                phone.faults.set("ok")
            run = await finished_run(services, "alice")
            assert run.state is RunState.DONE
            assert effects_of(await phone.effects(), "alice").count(SEAT_DELETED) == 1


async def pipeline_metrics(gateway_url: str) -> dict[tuple[str, str], float]:
    """``channelgate_deprovision_runs`` and ``_backlog`` (steps) by state, as a Prometheus scrape reads them."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{gateway_url}/.channelgate/metrics")).text
    kinds = {"channelgate_deprovision_runs": "runs", "channelgate_deprovision_backlog": "steps"}
    return {
        (kinds[family.name], sample.labels["state"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name in kinds
        for sample in family.samples
    }


async def test_a_channel_down_past_the_budget_is_dead_lettered_visible_and_alerting_never_done() -> None:
    toml = FAST_RETRIES + "max_attempts = 3\n"
    async with offboarding_stack({"alice": 1}, ["alice", "carol"], deprovision_toml=toml) as stack:
        stack.add_agents(["alice", "carol"], managers={"alice": "carol"})
        async with gateway_of(stack) as services:
            await give_access(services, "alice")
            stack.consoles["chat"].faults.set("unavailable", "/oauth/")
            await services.killer.deprovision("alice", reason="left", actor="t", source="cli")
            run = await finished_run(services, "alice")
            assert run.state is RunState.ATTENTION
            steps = await steps_by_channel(services, run)
            assert steps[("chat", "revoke")].state is StepState.DEAD
            assert steps[("chat", "revoke")].attempts == 3
            # Verification still ran, and it says access remains: the evidence a reviewer needs.
            assert steps[("chat", "verify")].state is not StepState.DONE
            assert steps[("phone", "remove")].state is StepState.DONE
            dead = services.metrics.registry.get_sample_value(
                "channelgate_deprovision_dead_letters_total", {"channel": "chat", "step": "revoke"}
            )
            assert dead == 1.0
            kinds = [r.kind for r in await receipts(services, run)]
            assert "deprovision_attention" in kinds and "deprovision_complete" not in kinds
            async with httpx.AsyncClient() as http:
                status = await http.get(
                    f"{stack.gateway_url}/.channelgate/admin/agents/alice",
                    headers={"Authorization": f"Bearer {stack.admin_token}"},
                )
            shown = status.json()["deprovisioning"][0]
            assert shown["state"] == "attention"
            # What an operator's alert reads: the run in attention and its dead step, counted now.
            counted = await pipeline_metrics(stack.gateway_url)
            assert counted[("runs", "attention")] == 1.0 and counted[("runs", "done")] == 0.0
            assert counted[("steps", "dead")] == 2.0  # its revocation, and the verification that followed it
            assert {(s["channel"], s["step"]): s["state"] for s in shown["steps"]}[("chat", "revoke")] == "dead"
            # The channel is fixed; an operator retries the run and it completes.
            stack.consoles["chat"].faults.set("ok")
            async with httpx.AsyncClient() as http:
                retried = await http.post(
                    f"{stack.gateway_url}/.channelgate/admin/deprovision/runs/{run.id}/retry",
                    headers={"Authorization": f"Bearer {stack.admin_token}"},
                )
            assert retried.status_code == 200 and retried.json()["steps_requeued"] >= 1
            await asyncio.sleep(0.2)
            assert (await finished_run(services, "alice")).state is RunState.DONE
            counted = await pipeline_metrics(stack.gateway_url)
            assert counted[("runs", "attention")] == 0.0 and counted[("runs", "done")] == 1.0
            assert counted[("steps", "dead")] == 0.0
