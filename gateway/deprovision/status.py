"""What ``channelgate agents status`` and ``GET /.channelgate/admin/agents/{agent}`` show of the pipeline: the
agent's runs, newest first, each with every step per channel (state, attempts, vendor reference, detail)."""

from __future__ import annotations

from gateway.deprovision.plan import RunState
from gateway.storage.pipeline import PipelineRepository, RunRecord

#: What ``agents deprovision --wait`` ends with for a run that finished: its exit code and a line for stderr.
WAIT_ENDINGS: dict[RunState, tuple[int, str | None]] = {
    RunState.DONE: (0, None),
    RunState.ATTENTION: (1, "some steps did not complete; see the lines above (channelgate deprovision retry RUN)"),
    RunState.SUPERSEDED: (
        1,
        "the run was superseded: the agent was made active again before it finished, so its access was not ended; "
        "steps marked done above were carried out and stay so (undo them by hand if needed)",
    ),
}


async def runs_with_steps(pipeline: PipelineRepository, runs: list[RunRecord]) -> list[dict[str, object]]:
    steps = await pipeline.steps_of([r.id for r in runs]) if runs else []
    shown: list[dict[str, object]] = []
    for run in runs:
        entry = run.as_dict()
        entry["steps"] = [s.as_dict() for s in steps if s.run_id == run.id]
        shown.append(entry)
    return shown


async def agent_pipeline(pipeline: PipelineRepository, agent_id: str, limit: int = 5) -> list[dict[str, object]]:
    """The agent's newest ``limit`` runs with their steps."""
    return await runs_with_steps(pipeline, (await pipeline.runs_of_agent(agent_id))[:limit])


def render_run(run: dict[str, object]) -> str:
    """A run as a terminal table: one line per step and channel, the receipt's detail and vendor reference."""
    lines = [
        f"deprovisioning run {run['run_id']} of {run['user_name']} ({run['source']}, by {run['actor']}): "
        f"{str(run['state']).upper()}"
    ]
    if run["state"] == RunState.SUPERSEDED.value:
        lines.append(
            "  the agent was made active again before this run finished: 'done' steps were carried out (undo them "
            "by hand if needed), 'superseded' ones were not taken"
        )
    steps = run.get("steps")
    for step in steps if isinstance(steps, list) else []:
        reference = f" [ref {step['vendor_reference']}]" if step.get("vendor_reference") else ""
        tries = f" after {step['attempts']} attempts" if int(step.get("attempts") or 0) > 1 else ""
        lines.append(
            f"  {step['channel']:<10} {step['step']:<10} {step['state']:<15} {step.get('detail') or ''}{tries}"
            f"{reference}"
        )
    return "\n".join(lines)
