"""The admin's actions: end an agent's sessions, deprovision an agent, retry a dead-lettered run.

Each action is recorded in the access log with the actor ``console:<userName>`` strictly: the record is written
before (or in the same transaction as) the change, and the action does not happen if it cannot be written
(as Teleport's RFD 68: no action without a record). Every action answers with a 303 redirect to a page
(Post/Redirect/Get), so reloading a result page never repeats the action.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from urllib.parse import quote

from starlette.responses import RedirectResponse, Response

from gateway.console.progress import TROUBLE
from gateway.console.render import page
from gateway.console.reviewer import find_agent
from gateway.console.web import Call
from gateway.deprovision.endings import EndedSessions, EndsNotSaved
from gateway.deprovision.operator import retry_run
from gateway.deprovision.plan import RunState
from gateway.deprovision.status import runs_with_steps
from gateway.errors import BadRequest, ChannelgateError, NotFound
from gateway.scope import scope_of
from gateway.storage.access_log import AccessRecord
from gateway.timeutil import utcnow

BASE = "/.channelgate/console"


def _see(path: str, notice: str | None = None) -> RedirectResponse:
    return RedirectResponse(BASE + path + (f"?notice={notice}" if notice else ""), status_code=303)


def _agent_path(agent_id: str) -> str:
    return "/agents/" + quote(agent_id, safe="")


async def end_sessions(call: Call) -> Response:
    """End every session of the agent on every replica (through the killer: each replica closes the agent's
    WebSockets and streams and acknowledges), recorded before and after."""
    agent = await find_agent(call, call.request.path_params["agent"])
    scope = scope_of(call.request, call.services.settings.server.trusted_proxies)
    base = AccessRecord(
        time=utcnow(),
        kind="console_sessions_end",
        request_id=scope.request_id,
        agent_id=agent.id,
        agent_name=agent.user_name,
        source_ip=scope.client_ip,
        actor=call.user.actor,
        decision="requested",
        reason="an admin ended the agent's sessions from the console",
    )
    await call.services.audit.write(base)
    try:
        ended = await call.services.killer.endings.end_sessions(agent.id)
    except EndsNotSaved as exc:
        # The sessions did end: that gets its record too, through the queue (kept and retried while the database
        # is down), since a strict write would fail like the save did. The admin sees the 503.
        done = exc.ended.get(agent.id)
        if done is not None:
            with contextlib.suppress(ChannelgateError):
                call.services.audit.submit(_revoked(base, done, saved=False))
        raise
    assert ended is not None  # without an IdP session id every session is ended and a revocation broadcast
    await call.services.audit.write(_revoked(base, ended))
    return _see(_agent_path(agent.id), "sessions-ended" if ended.count else "no-sessions")


async def deprovision_form(call: Call) -> Response:
    agent = await find_agent(call, call.request.path_params["agent"])
    return page("deprovision.html", **call.context(nav="agents", agent=agent))


async def deprovision(call: Call) -> Response:
    """Disable the agent, end its sessions everywhere and queue the channel steps (``SessionKiller.deprovision``:
    the disable, its record and the run commit in one transaction), then show the run's live progress."""
    agent = await find_agent(call, call.request.path_params["agent"])
    reason = call.field("reason")
    if not reason:
        raise BadRequest("Give a reason: why this agent's access ends (it goes into the offboarding evidence).")
    successor = call.field("successor", limit=256) or None
    if successor is not None and await call.services.agents.find_by_user_name(successor) is None:
        raise BadRequest(f"No live agent has the userName {successor!r}; leave the successor empty to use the manager.")
    result = await call.services.killer.deprovision(
        agent.id, reason=reason, actor=call.user.actor, source="console", successor=successor
    )
    if result.run is None:
        return _see(_agent_path(agent.id), "deprovisioned")
    return _see("/runs/" + quote(result.run.id, safe=""), "deprovisioned")


async def dead_letters(call: Call) -> Response:
    """Runs that finished needing attention: a step went dead (retries spent), failed or was blocked."""
    runs = await call.services.pipeline.runs_in_state([RunState.ATTENTION], limit=500)
    shown = await runs_with_steps(call.services.pipeline, runs)
    for run in shown:
        steps = run["steps"]
        assert isinstance(steps, list)
        run["trouble"] = [step for step in steps if step["state"] in TROUBLE]
    return page("dead_letters.html", **call.context(nav="dead", runs=shown, notice=None))


async def retry(call: Call) -> Response:
    """Give the run's dead, failed and blocked steps a fresh budget (``operator.retry_run``: the change and its
    record in one transaction) and wake this replica's worker."""
    run_id = call.request.path_params["run"][:100]
    if await call.services.pipeline.get_run(run_id) is None:
        raise NotFound("No deprovisioning run has that id.")
    services = call.services
    count = await retry_run(services.database, services.pipeline, services.audit, run_id, call.user.actor)
    if count and call.services.worker is not None:
        call.services.worker.wake()
    return _see("/runs/" + quote(run_id, safe=""), "retried" if count else "nothing-to-retry")


def _revoked(base: AccessRecord, ended: EndedSessions, *, saved: bool = True) -> AccessRecord:
    """The ``sessions_revoked`` record of the console's "end sessions" (``saved``: its end was written for the
    sweep after a session-store outage, else kept in process to be)."""
    detail: dict[str, object] = {
        "source": "console",
        "sessions": ended.count,
        "replicas_confirmed": sorted(ended.confirmed),
        "replicas_missing": sorted(ended.missing),
    }
    return replace(
        base,
        time=utcnow(),
        kind="sessions_revoked",
        decision="revoked",
        detail=detail if saved else detail | {"end_saved": False},
    )
