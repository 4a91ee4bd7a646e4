"""What ``channelgate agents status`` and ``GET /.channelgate/admin/agents/{agent}`` show of the pipeline: the
agent's runs, newest first, each with every step per channel (state, attempts, vendor reference, detail)."""

from __future__ import annotations

from gateway.storage.pipeline import PipelineRepository, RunRecord


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
