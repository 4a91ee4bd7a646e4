"""The operator's CLI on a run superseded by a SCIM re-enable (against the demo consoles over HTTP): ``deprovision
list --state superseded`` lists it, ``deprovision retry`` refuses it and says why, and ``agents deprovision --wait``
following it ends with a failure that says the access was not ended, never as done."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from gateway.cli import main
from gateway.cli.agents import _wait_for_run
from gateway.deprovision.plan import StepState
from gateway.settings import load_settings
from gateway.timeutil import utcnow
from tests.components.echo_gateway import eventually
from tests.components.offboarding import offboarding_stack
from tests.integration.test_deprovision_pipeline import FAST_RETRIES, gateway_of, give_access, steps_by_channel
from tests.integration.test_deprovision_retry_and_reenable import patch_active


async def test_the_cli_lists_a_superseded_run_refuses_to_retry_it_and_a_wait_on_it_never_ends_as_done(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with offboarding_stack(
        {"alice": 1}, ["alice", "carol"], deprovision_toml=FAST_RETRIES + "max_attempts = 1000\n"
    ) as stack:
        ids = stack.add_agents(["alice", "carol"], managers={"alice": "carol"})
        async with gateway_of(stack) as services:
            await give_access(services, "alice")
            stack.consoles["phone"].faults.set("unavailable", "/admin/")
            run = (await services.killer.deprovision("alice", reason="left", actor="t", source="cli")).run
            assert run is not None

            async def chat_revoked() -> bool:
                return bool((await steps_by_channel(services, run))[("chat", "revoke")].state is StepState.DONE)

            await eventually(chat_revoked, 20)
            token = await services.scim_tokens.create("entra", utcnow())
            async with httpx.AsyncClient() as http:
                response = await http.patch(
                    f"{stack.gateway_url}/scim/v2/Users/{ids['alice']}",
                    json=patch_active("True"),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"},
                )
                assert response.status_code in (200, 204), response.text
        config = ["--config", str(stack.config_path)]
        capsys.readouterr()
        listed = await asyncio.to_thread(main, [*config, "deprovision", "list", "--state", "superseded"])
        shown = capsys.readouterr()
        retried = await asyncio.to_thread(main, [*config, "deprovision", "retry", run.id])
        refused = capsys.readouterr()
        waited = await _wait_for_run(load_settings(stack.config_path, environ={}), run.id, 5)
        followed = capsys.readouterr()

    assert listed == 0
    [entry] = json.loads(shown.out)
    assert (entry["run_id"], entry["state"]) == (run.id, "superseded")
    assert ("chat", "revoke", "done") in {(s["channel"], s["step"], s["state"]) for s in entry["steps"]}
    assert (
        retried == 1
        and f"Run {run.id} was superseded" in refused.err
        and "deprovision the agent again" in (refused.err)
    )
    assert waited == 1
    assert ": SUPERSEDED" in followed.out and "'superseded' ones were not taken" in followed.out
    assert "the run was superseded" in followed.err and "access was not ended" in followed.err
