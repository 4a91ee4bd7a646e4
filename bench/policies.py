"""Policy decision cost in process: 200 Cedar policies, 10,000 agents, a working day of requests.

The policy set is the shipped default (the route group rule) and examples, plus generated rules of the same kinds
spread over 20 channels (MFA for personal data, downloads only from the office, exports for supervisors, trainee
shifts): 200 in all. Agents hold one of 40 roles (a role is a set of groups), 5 % of them one extra group of
their own. Each request: a random agent, one of its channels, a data class and action, one of four networks,
the clock moving one minute every 500 requests through a day. An agent's network and MFA are those of its
session (fixed per agent); pages are 60 % without personal data, actions 80 % view. What is timed is what the
proxy pays per request:
``PolicyPoint.context`` (network, MFA, clock) plus ``PolicyPoint.decide``.

Three settings, same requests: the engine as shipped (decision cache), every request evaluated by Cedar (no
cache: the cost of a miss), and a set with one policy that reads the agent's name (answers then kept per agent).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

from gateway.policy_point import PolicyPoint
from gateway.settings_policies import PolicySettings
from policies.decision import Query, Subject, Target

CHANNELS = [f"ch{i:02d}" for i in range(20)]
PII = ["none", "customer", "recording", "payment"]
PII_WEIGHTS = [60, 25, 10, 5]
ACTIONS = ["view", "change", "download", "export"]
ACTION_WEIGHTS = [80, 14, 4, 2]
NETWORKS = {"office": ("10.10.0.0/16",), "vpn": ("10.20.0.0/16",)}
CLIENTS = ["10.10.3.4", "10.20.7.9", "192.0.2.10", "198.51.100.7"]
GOAL_P99_US = 100.0


@dataclass
class DecisionRun:
    label: str
    samples_us: list[float]
    evaluations: int
    decisions: int

    def pct(self, p: float) -> float:
        ordered = sorted(self.samples_us)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def hit_rate(self) -> float:
        return 1 - self.evaluations / self.decisions if self.decisions else 0.0


@dataclass
class PolicyBenchResult:
    policies: int
    agents: int
    requests: int
    runs: list[DecisionRun] = field(default_factory=list)
    cache_bytes: int = 0


def generated_policies(count: int, rng: random.Random) -> str:
    rules = []
    for index in range(count):
        channel = CHANNELS[index % len(CHANNELS)]
        kind = index % 5
        pid = f"gen-{index:03d}"
        if kind == 0:
            pii = rng.choice(["customer", "payment"])
            rules.append(
                f'@id("{pid}")\n@reason("{pii} data on {channel} needs MFA.")\n'
                f'forbid (principal, action, resource in Channel::"{channel}") '
                f'when {{ resource.pii == "{pii}" && !context.mfa }};'
            )
        elif kind == 1:
            rules.append(
                f'@id("{pid}")\nforbid (principal, action in [Action::"download", Action::"export"], '
                f'resource in Channel::"{channel}") unless {{ context.network == "office" }};'
            )
        elif kind == 2:
            rules.append(
                f'@id("{pid}")\npermit (principal in Group::"sup-{index % 7}", action == Action::"export", '
                f'resource in Channel::"{channel}");'
            )
        elif kind == 3:
            start = 420 + 60 * (index % 4)
            rules.append(
                f'@id("{pid}")\nforbid (principal in Group::"trainee-{index % 5}", action, '
                f'resource in Channel::"{channel}") unless {{ context.time.minute_of_day >= {start} && '
                f"context.time.minute_of_day < {start + 540} }};"
            )
        else:
            rules.append(
                f'@id("{pid}")\nforbid (principal, action == Action::"change", resource in Channel::"{channel}") '
                f'when {{ resource.pii == "recording" }} unless {{ principal in Group::"sup-{index % 7}" }};'
            )
    return "\n\n".join(rules) + "\n"


def _point(directory: Path, extra: str) -> PolicyPoint:
    root = Path(__file__).resolve().parents[1] / "policies"
    (directory / "generated.cedar").write_text(extra, encoding="utf-8")
    paths = (root / "default", root / "examples", directory)
    return PolicyPoint(PolicySettings(paths=paths, networks=NETWORKS, reload_interval_seconds=0), ())


Agent = tuple[Subject, list[str], str, bool]


def _agents(count: int, rng: random.Random) -> list[Agent]:
    roles = []
    for _ in range(40):
        groups = {f"agents-{c}" for c in rng.sample(CHANNELS, rng.randint(2, 5))}
        if rng.random() < 0.2:
            groups.add(f"sup-{rng.randrange(7)}")
        if rng.random() < 0.15:
            groups.add(f"trainee-{rng.randrange(5)}")
        roles.append(frozenset(groups))
    agents = []
    for index in range(count):
        groups = set(rng.choice(roles))
        if rng.random() < 0.05:
            groups.add(f"team-{index}")
        channels = sorted(g.removeprefix("agents-") for g in groups if g.startswith("agents-"))
        subject = Subject(f"a{index:05d}", f"agent{index:05d}", frozenset(groups))
        agents.append((subject, channels, rng.choice(CLIENTS), rng.random() < 0.7))
    return agents


def _run(label: str, point: PolicyPoint, agents: list[Agent], requests: int, *, cached: bool,
         seed: int) -> DecisionRun:  # fmt: skip
    rng = random.Random(seed)
    targets = {
        (channel, pii): Target(channel, (f"agents-{channel}",), f"/{channel}/", pii)
        for channel in CHANNELS
        for pii in PII
    }
    day_start = 1_796_000_000.0 + 60 * 60 * (seed % 3)  # a fixed day; later seeds start later in it
    samples: list[float] = []
    engine = point.engine
    before_evaluations, before_decisions = engine.evaluations, engine.decisions
    perf = time.perf_counter_ns
    for index in range(requests):
        subject, channels, client, mfa = agents[rng.randrange(len(agents))]
        channel = rng.choice(channels) if channels else rng.choice(CHANNELS)
        target = targets[(channel, rng.choices(PII, PII_WEIGHTS)[0])]
        action = rng.choices(ACTIONS, ACTION_WEIGHTS)[0]
        now = day_start + 60 * (index // 500)
        started = perf()
        context = point.context(
            client_ip=client, peer=client, acr=None, amr=("pwd", "otp") if mfa else ("pwd",),
            device_header=None, via="inline", now=now,
        )  # fmt: skip
        if cached:
            point.decide(subject, target, action, context)
        else:
            engine.evaluate(Query(subject, target, action, context))
            engine.decisions += 1
        samples.append((perf() - started) / 1000)
    return DecisionRun(label, samples, engine.evaluations - before_evaluations, engine.decisions - before_decisions)


def run_policy_decisions(
    *, agents: int = 10_000, policies: int = 200, requests: int = 200_000, work: Path
) -> PolicyBenchResult:
    rng = random.Random(7)
    population = _agents(agents, rng)
    shipped = 6
    text = generated_policies(policies - shipped, rng)
    work.mkdir(parents=True, exist_ok=True)
    point = _point(work, text)
    assert len(point.engine.bundle.policies) == policies, len(point.engine.bundle.policies)
    result = PolicyBenchResult(policies, agents, requests)
    _log(f"{policies} policies, {agents:,} agents, {requests:,} requests")
    # Warm-up (imports, first parses), not counted.
    _run("warm-up", point, population, 5_000, cached=True, seed=1)
    point = _point(work, text)
    result.runs.append(_run("cold start: the first requests after a start or reload", point, population, requests,
                            cached=True, seed=2))  # fmt: skip
    _log(f"cold cache p99 {result.runs[-1].pct(99):.1f} µs")
    # The same replica after a busy morning: the day's traffic continues (other agents, later minutes).
    _run("warm-up", point, population, 2 * requests, cached=True, seed=4)
    result.runs.insert(0, _run("steady state (as shipped, decision cache)", point, population, requests,
                               cached=True, seed=5))  # fmt: skip
    _log(f"steady p99 {result.runs[0].pct(99):.1f} µs")
    # The cache's memory, in a replay of the same requests (tracemalloc slows everything: not during the timing).
    tracemalloc.start()
    _run("memory", _point(work, text), population, 3 * requests, cached=True, seed=2)
    result.cache_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    point = _point(work, text)
    cold = max(20_000, requests // 10)
    result.runs.append(_run("every request evaluated (no cache)", point, population, cold, cached=False, seed=3))
    _log(f"uncached p99 {result.runs[-1].pct(99):.1f} µs")
    specific = text.replace(
        '@id("gen-000")',
        '@id("gen-name")\nforbid (principal, action, resource) when { principal.user_name == "agent00000" };\n\n'
        '@id("gen-000")',
    )
    point = _point(work, specific)
    result.runs.append(
        _run("a policy reads the agent's name (answers kept per agent)", point, population, requests, cached=True,
             seed=2)
    )  # fmt: skip
    _log(f"per-agent p99 {result.runs[-1].pct(99):.1f} µs")
    return result


def policy_section(result: PolicyBenchResult) -> list[str]:
    shipped = result.runs[0]
    verdict = "met" if shipped.pct(99) < GOAL_P99_US else "**missed**"
    lines = [
        "## 7. Policy decisions (Cedar)",
        "",
        f"In process, one Python thread: {result.policies} policies (the shipped default and examples plus generated "
        f"rules over 20 channels), {result.agents:,} agents in 40 roles, random requests through a working day. "
        "Timed per request: building the context (network, MFA, clock) and the decision. Source: `bench/policies.py`.",
        "",
        f"**Goal: p99 < {GOAL_P99_US:.0f} µs with {result.policies} policies and {result.agents:,} agents: {verdict} "
        f"(p99 {shipped.pct(99):.1f} µs as shipped).**",
        "",
        "| setting | requests | p50 µs | p99 µs | p99.9 µs | mean µs | Cedar evaluations |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result.runs:
        lines.append(
            f"| {run.label} | {len(run.samples_us):,} | {run.pct(50):.1f} | {run.pct(99):.1f} | {run.pct(99.9):.1f} | "
            f"{statistics.fmean(run.samples_us):.1f} | {run.evaluations:,} ({100 * (1 - run.hit_rate):.1f} %) |"
        )
    lines += [
        "",
        f"Memory held after the shipped run (decision cache and the engine's parsed context and resource texts): "
        f"{result.cache_bytes / 1e6:.1f} MB (tracemalloc, in a replay). "
        "A miss costs one Cedar evaluation of the channel's slice (the channel's own policies and the channel-wide "
        "ones), with only the request's entities; answers are shared between agents whose groups are equal unless a "
        "policy reads the agent itself.",
        "",
    ]
    return lines


def _log(message: str) -> None:
    print(f"[policies] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    import tempfile

    outcome = run_policy_decisions(work=Path(tempfile.mkdtemp(prefix="channelgate-bench-policies-")))
    print("\n".join(policy_section(outcome)))
