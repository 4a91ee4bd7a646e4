"""SIGKILL of the gateway at random moments during 100 concurrent deprovisionings, then restart (issue 4): every
pipeline completes, each channel sees each effect exactly once (revocation, seat disable and deletion, console
logout, ticket hand-over), every finished step has exactly one receipt, and no agent is left enabled."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections import Counter
from pathlib import Path

import httpx

from gateway.audit.verify import verify_chain
from gateway.deprovision.plan import RunState, StepState
from gateway.services import open_core
from gateway.settings import load_settings
from tests.components.offboarding import OffboardingStack, offboarding_stack
from tests.components.process import ChildProcess
from tests.integration.test_deprovision_pipeline import gateway_of, give_access

ROOT = Path(__file__).resolve().parents[2]
AGENTS = [f"agent{n:03d}" for n in range(100)]
#: Short leases so a killed replica's claims are taken over within seconds; retries fast.
CRASH_TOML = (
    "retry_base_seconds = 0.05\nretry_max_seconds = 0.5\npoll_seconds = 0.1\nlease_seconds = 3\n"
    "max_attempts = 1000\n[deprovision.guard]\nenabled = false\n"
)


def _gateway_process(stack: OffboardingStack, log: Path) -> ChildProcess:
    argv = [sys.executable, "-m", "gateway", "--config", str(stack.config_path), "serve", "--no-migrate"]
    return ChildProcess([*argv, "--log-level", "warning"], log, name="gateway", cwd=ROOT)


async def _until_ready(process: ChildProcess, url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            if not process.running:
                raise AssertionError(f"the gateway exited\n{process.log_tail()}")
            try:
                if (await http.get(url + "/.channelgate/healthz", timeout=0.5)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway did not start\n{process.log_tail()}")


async def _deprovision_all(stack: OffboardingStack, users: set[str]) -> set[str]:
    """Ask the running gateway to deprovision ``users`` at once, as an IdP would; the userNames it confirmed."""
    limits = httpx.Limits(max_connections=100)
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:

        async def one(user: str) -> str | None:
            try:
                response = await http.post(
                    f"{stack.gateway_url}/.channelgate/admin/agents/{user}/deprovision",
                    json={"reason": "bulk offboarding"},
                    headers=headers,
                )
            except httpx.TransportError:
                return None  # the gateway died under the call: the IdP will call again
            return user if response.status_code == 200 else None

        return {user for user in await asyncio.gather(*(one(u) for u in sorted(users))) if user is not None}


async def test_sigkill_during_100_concurrent_deprovisions_loses_nothing_and_repeats_no_effect(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_TEST_SEED", "4")))
    async with offboarding_stack({u: 1 for u in AGENTS}, [*AGENTS, "lead"], deprovision_toml=CRASH_TOML) as stack:
        stack.add_agents([*AGENTS, "lead"], managers={u: "lead" for u in AGENTS})
        async with gateway_of(stack) as services:
            for user in AGENTS:
                await give_access(services, user)
        gateway = _gateway_process(stack, tmp_path / "gateway.log")
        unconfirmed = set(AGENTS)
        try:
            for _ in range(3):
                gateway.start()
                await _until_ready(gateway, stack.gateway_url)
                calls = asyncio.create_task(_deprovision_all(stack, unconfirmed))
                await asyncio.sleep(rng.uniform(0.3, 2.0))
                gateway.kill()
                unconfirmed -= await calls
            gateway.start()
            await _until_ready(gateway, stack.gateway_url)
            unconfirmed -= await _deprovision_all(stack, unconfirmed)
            assert not unconfirmed
            settings = load_settings(stack.config_path, environ={})
            core = open_core(settings)
            try:
                ids = {user: stack.agents[user] for user in AGENTS}
                for _ in range(600):
                    runs = {u: await core.pipeline.runs_of_agent(i) for u, i in ids.items()}
                    if all(r and r[0].state in (RunState.DONE, RunState.ATTENTION) for r in runs.values()):
                        break
                    await asyncio.sleep(0.2)
                states = Counter(r[0].state for r in runs.values() if r)
                assert states == Counter({RunState.DONE: 100}), (states, gateway.log_tail())
                assert all(len(r) == 1 for r in runs.values()), "a repeated trigger started a second run"
                for user in AGENTS:
                    agent = await core.agents.find(user)
                    assert agent is not None and not agent.active
                # Exactly one receipt saying "done" per finished step: none missing, none doubled.
                steps = await core.pipeline.steps_of([r[0].id for r in runs.values()])
                assert all(s.state is StepState.DONE for s in steps) and len(steps) == 1000
                # The kills did land mid-work: steps claimed by a killed replica were taken over after their lease.
                assert any(s.attempts > 1 for s in steps), "no kill interrupted a claimed step; the test proved nothing"
                records = await core.audit._repository.tail(100_000)
                done = Counter(
                    (r.detail["run"], r.channel, r.detail["step"])
                    for r in records
                    if r.kind == "deprovision_step" and r.decision == "done" and r.detail
                )
                assert set(done.values()) == {1} and len(done) == 1000
                # The access log's chain survived the kills (issue 5): every committed record is chained once,
                # in one unbroken chain, sealing passes cut by SIGKILL included.
                head = await core.sealer.seal_all()
                report = await verify_chain(core.sealer.store, None, {})
                assert report.ok, report.problem
                assert report.checked == head.chain_pos == len(records) and report.unsealed == 0
            finally:
                await core.close()
        finally:
            gateway.stop()
        # The consoles saw each effect once per agent, however often the pipeline had to repeat a call.
        for channel, expected in {
            "chat": {"ticket reassigned": 1},
            "phone": {"seat disabled": 1, "seat deleted": 1},
            "mail": {"console session logged out": 1, "ticket reassigned": 1},
        }.items():
            effects = await stack.consoles[channel].effects()
            keys = [e["idempotency_key"] for e in effects if e["idempotency_key"]]
            assert len(keys) == len(set(keys)), f"{channel}: an idempotency key took effect twice"
            for user in AGENTS:
                seen = Counter(e["effect"] for e in effects if e["subject"] == user)
                for effect, count in expected.items():
                    assert seen[effect] == count, (channel, user, effect, seen)
        chat_effects = await stack.consoles["chat"].effects()
        revoked = Counter(e["subject"] for e in chat_effects if e["effect"] == "token_revoked")
        assert set(revoked) == set(AGENTS)
