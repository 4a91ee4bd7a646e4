"""Render docs/benchmarks.md from one run's results."""

from __future__ import annotations

import statistics

from bench.audit import AuditBenchResult
from bench.forward_auth import ForwardAuthResult, forward_auth_section
from bench.ldap import LdapBenchResult, ldap_section
from bench.load import LoadResult
from bench.load_report import load_section
from bench.offboarding import OffboardingResult
from bench.policies import PolicyBenchResult, policy_section
from bench.revocation import RevocationResult, Trial, percentile
from bench.scaling import ScalingResult, scaling_section
from bench.scim import GOAL_P99_MS, GOAL_RPS, ScimDisableResult, ScimResult
from bench.throughput import TARGETS, ThroughputResult

THROUGHPUT_GOAL = 0.8
REVOCATION_GOAL_MS = 100.0
OFFBOARDING_GOAL_SECONDS = 60.0
OFFBOARDING_GOAL_AGENTS = 10_000


def previous_sections(text: str) -> dict[str, list[str]]:
    """The numbered sections (``## N. ...`` up to the next ``## ``) of a previous page, each marked with the date
    of the run that measured it (that page's, or the one a section kept from an earlier page already names), for
    the benchmarks a ``--skip`` run did not measure again."""
    date = next((line.removeprefix("- Date: ") for line in text.splitlines() if line.startswith("- Date: ")), "?")
    sections: dict[str, list[str]] = {}
    measured: dict[str, str] = {}
    current: list[str] | None = None
    number = ""
    for line in text.splitlines():
        if line.startswith("## "):
            number = line[3:].split(".", 1)[0]
            current = [line] if number.isdigit() else None
            if current is not None:
                sections[number] = current
            continue
        if current is None:
            continue
        if line.startswith(_KEPT):
            # Older pages stacked one line per keep, newest first: the last one names the measuring run.
            measured[number] = line.removeprefix(_KEPT).split(" (skipped", 1)[0]
            continue
        current.append(line)
    for key, lines in sections.items():
        body = lines[1:]
        while body and body[0] == "":
            body.pop(0)
        lines[1:] = ["", f"{_KEPT}{measured.get(key, date)} (skipped in this run).", "", *body]
    return sections


_KEPT = "> Kept from the run of "


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def throughput_section(result: ThroughputResult) -> list[str]:
    rounds = len(result.rounds)
    lines = [
        "## 1. Inline proxy throughput",
        "",
        f"Load: `wrk -t{result.threads} -c{result.connections} -d{result.duration:g}s --latency` on `GET /chat/`, "
        f"{rounds} round(s); each round runs every target once after a short warm-up run, in the order below in "
        "even rounds and in reverse in odd ones (so a drift in the shared machine's speed favours no side). "
        'The upstream is one nginx worker answering `return 200 "ok"`; every proxy forwards to it over '
        "keep-alive connections. Figures are the median over the rounds; ratios are taken per round (against "
        "the bare proxy measured in the same round) and the median is shown, with every round's value after it.",
        "",
        "| target | req/s | p50 ms | p90 ms | p99 ms | non-2xx | socket errors | req/s ÷ bare proxy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target, label in TARGETS.items():
        ratios = result.ratio(target)
        errors = sum(run[target].non_2xx for run in result.rounds)
        sockets = sum(run[target].socket_errors for run in result.rounds)
        each = " / ".join(f"{value:.2f}" for value in ratios)
        lines.append(
            f"| {label} | {result.median(target, 'requests_per_second'):,.0f} "
            f"| {result.median(target, 'p50_ms'):.2f} | {result.median(target, 'p90_ms'):.2f} "
            f"| {result.median(target, 'p99_ms'):.2f} | {errors} | {sockets} "
            f"| {statistics.median(ratios):.2f}× ({each}) |"
        )
    streamed = statistics.median(result.ratio("memory-stream"))
    memory = statistics.median(result.ratio("memory"))
    redis = statistics.median(result.ratio("redis"))
    verdict = "meets" if memory >= THROUGHPUT_GOAL else "**misses**"
    lines += [
        "",
        f"**(c) ÷ (b) = {memory:.2f}×** (goal ≥ {THROUGHPUT_GOAL}×: {verdict} it); "
        f"with the Redis store (d) ÷ (b) = {redis:.2f}×. "
        f"nginx `proxy_pass` ÷ bare Python proxy = {statistics.median(result.ratio('nginx')):.1f}×. "
        f"With a 256 KiB body, which every proxy streams, (c2) ÷ (b2) = {streamed:.2f}×: the gateway sends "
        "answers of at most 64 KiB with a known length as one body (no streaming task per response), which the "
        "bare proxy does not, so (c) ÷ (b) includes that design choice and (c2) ÷ (b2) does not.",
        "",
        "What the figures mean:",
        "",
        "- **req/s** is completed responses per second over the whole run, wrk and every server sharing the "
        "same CPUs (see the machine above): it is a comparison between targets in the same run, not a capacity "
        "figure for a production host.",
        "- **p50/p90/p99** are wrk's latency percentiles per request with 50 connections kept open, so they include "
        "queueing behind the other 49 connections; on a saturated single process, p50 ≈ 50 ÷ req/s.",
        "- **non-2xx** counts responses outside 2xx/3xx; every gateway request must be a 200 from the upstream "
        "(one request is checked by hand before the run, as wrk would count the login redirect as a success).",
        "- (c) and (d) do everything a real request does: read the session (memory dict or one Redis Lua "
        "round trip), decide by groups, strip client identity headers, inject the channel credential, sign a fresh "
        "ES256 identity assertion, stream the response, and queue an access-log record (batched into SQLite).",
        "",
    ]
    return lines


def _row(label: str, values: list[float]) -> str:
    return (
        f"| {label} | {len(values)} | {_ms(percentile(values, 50))} | {_ms(percentile(values, 95))} "
        f"| {_ms(percentile(values, 99))} | {_ms(max(values))} |"
    )


def _method_table(trials: list[Trial], replicas: int) -> list[str]:
    lines = ["| measured | trials | p50 ms | p95 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    for index in range(replicas):
        lines.append(_row(f"first 401 from replica {index}", [t.refused_after[index] for t in trials]))
    lines.append(_row("**both replicas refusing** (later of the two)", [t.worst for t in trials]))
    lines.append(_row("deprovision call, start → answer", [t.call_seconds for t in trials]))
    lines.append(_row("kill as reported by the gateway (`duration_ms`)", [t.reported_ms / 1000 for t in trials]))
    lines.append(_row("poll round trip (median per trial)", [t.poll_rtt_ms / 1000 for t in trials]))
    return lines


def revocation_section(result: RevocationResult) -> list[str]:
    api, cli = result.of("admin_api"), result.of("cli")
    lines = [
        "## 2. Revocation latency",
        "",
        f"Two gateway replicas, Redis session store, {result.database}. Per trial a fresh agent logs in through "
        "the real OIDC flow on replica 0, one poller per replica requests `/chat/` with that session in a tight "
        "loop (one keep-alive connection each, through to the upstream), and once both pollers have seen 200s the "
        "agent is deprovisioned. Latency = time from the start of the deprovision call until the first 401 from "
        "that replica *arrived* at the poller (so it includes up to one poll round trip, shown in the last row).",
        "",
    ]
    if api:
        worst = [t.worst for t in api]
        p99 = percentile(worst, 99) * 1000
        verdict = "meets" if p99 < REVOCATION_GOAL_MS else "**misses**"
        lines += [
            f"### Admin API — `POST /.channelgate/admin/agents/{{agent}}/deprovision`, {len(api)} trials",
            "",
            "The call goes to replica 0 or 1 alternately (trial number mod 2), so both the replica that kills "
            "and the replica that hears the broadcast are measured in both roles.",
            "",
            *_method_table(api, len(api[0].refused_after)),
            "",
            f"**p99 until both replicas refuse: {p99:.1f} ms** (goal < {REVOCATION_GOAL_MS:.0f} ms: {verdict} it). "
            f"Requests sent after the call returned and still allowed: {sum(t.late_allows for t in api)} "
            f"(must be 0). Trials with a replica missing its acknowledgement: "
            f"{sum(1 for t in api if t.replicas_missing)}. In-flight responses cut mid-body by the kill "
            f"(the gateway aborts an agent's open streams): {sum(t.cut_responses for t in api)}.",
            "",
        ]
    if cli:
        lines += [
            f"### CLI — `channelgate agents deprovision AGENT --reason ...`, {len(cli)} trials",
            "",
            "The same kill from a new Python process (with the Redis store the CLI does the kill itself: it opens "
            "the database and Redis, disables the agent, deletes the sessions, broadcasts and waits for both "
            "replicas' acknowledgements). The difference from the admin API is interpreter start-up and imports.",
            "",
            *_method_table(cli, len(cli[0].refused_after)),
            "",
            f"Requests sent after the CLI returned and still allowed: {sum(t.late_allows for t in cli)} (must be 0).",
            "",
        ]
    return lines


def scim_section(result: ScimResult) -> list[str]:
    lines = [
        "## 3. SCIM lookups with 100,000 agents",
        "",
        f"{result.agents:,} agents are written straight into the database (batches through SQLAlchemy Core, the "
        "columns and `attributes` the SCIM storage writes), then one gateway process is loaded with "
        f"`wrk -t{result.threads} -c{result.connections} -d{result.duration:g}s --latency` and a Lua script: every "
        'request is `GET /scim/v2/Users?filter=userName eq "agent-NNNNN"` for a random existing agent, spelled '
        "`agent-`, `AGENT-` or `Agent-` at random (userName is case-insensitive, RFC 7643 §4.1.1), with a SCIM "
        "bearer token. Three lookups are checked by hand first (`totalResults` 1, the right agent), since wrk "
        "only counts statuses.",
        "",
        "| database | agents loaded in | req/s | p50 ms | p90 ms | p99 ms | non-2xx | socket errors | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lookup in result.lookups:
        run = lookup.wrk
        met = run.requests_per_second >= GOAL_RPS and run.p99_ms < GOAL_P99_MS
        lines.append(
            f"| {lookup.database} | {lookup.load_seconds:.1f} s | {run.requests_per_second:,.0f} | {run.p50_ms:.2f} "
            f"| {run.p90_ms:.2f} | {run.p99_ms:.2f} | {run.non_2xx} | {run.socket_errors} "
            f"| {'meets' if met else '**misses**'} |"
        )
    lines += [
        "",
        f"Goal: ≥ {GOAL_RPS:,.0f} req/s and p99 < {GOAL_P99_MS:.0f} ms. Every request authenticates its bearer "
        "token (a SHA-256 lookup; `last_used_at` is written at most once a minute per client), then the lookup "
        "path (`scim/lookups.py`) reads the agent through the unique index on the lower-cased userName and its "
        "group memberships, and renders the ListResponse from the stored SCIM document. On SQLite both reads run "
        "inline on the event loop (`gateway/storage/quick_reads.py`); on PostgreSQL through asyncpg.",
        "",
    ]
    return lines


def scim_disable_section(result: ScimDisableResult) -> list[str]:
    last = result.last_refusal
    return [
        f"### SCIM disable until the last replica refuses, {len(last)} trials",
        "",
        f"The revocation set-up of section 2 (two replicas, Redis, {result.database}): per trial a fresh agent "
        "logs in, one poller per replica requests `/chat/` with its session, and Entra's default disable "
        '(`PATCH /scim/v2/Users/{id}` with `{"op": "Replace", "path": "active", "value": "False"}`) is sent to '
        "replica 0. Latency = from the start of the PATCH until the first 401 from the later of the two replicas "
        "arrived.",
        "",
        "| measured | trials | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
        _row("**both replicas refusing** (later of the two)", last),
        _row("SCIM PATCH, start → answer", result.call_seconds),
        "",
        f"**p99 until both replicas refuse: {percentile(last, 99) * 1000:.1f} ms** (goal < "
        f"{REVOCATION_GOAL_MS:.0f} ms: {'meets' if percentile(last, 99) * 1000 < REVOCATION_GOAL_MS else '**misses**'}"
        f" it). Requests sent after the PATCH answered and still allowed: {result.late_allows} (must be 0).",
        "",
    ]


def offboarding_section(result: OffboardingResult) -> list[str]:
    goal = result.agents >= OFFBOARDING_GOAL_AGENTS and result.total_seconds < OFFBOARDING_GOAL_SECONDS
    complete = result.runs_done == result.agents and result.receipts == result.steps
    return [
        f"## 4. Bulk offboarding of {result.agents:,} agents",
        "",
        "Three demo consoles as their own processes (chat: OAuth 2.0 authorization server + ticket API; phone: "
        "seats admin API; mail: legacy form login + ticket API) and one `channelgate serve` (SQLite, WAL, "
        "`synchronous=FULL`; pipeline concurrency "
        f"{result.worker_concurrency}). Every agent first gets what its first requests through the gateway "
        "leave behind (an OAuth token pair, a seat, a console session) and an open ticket at chat and at mail. "
        "Then the deprovisionings arrive through the admin API, 32 at a time; the clock stops when every run is "
        "`done` and every receipt is in the access log (read from the database). The mass-deletion guard is off, "
        "as for an offboarding an admin approved in advance. Baseline, same run: the same connector calls for "
        f"{result.baseline_agents:,} other agents, made directly in one process with the same concurrency and no "
        "pipeline (no outbox, leases, receipts or retries).",
        "",
        "| measured | value |",
        "|---|---:|",
        f"| agents × channels | {result.agents:,} × 3 |",
        f"| pipeline steps / done receipts | {result.steps:,} / {result.receipts:,} |",
        f"| runs done | {result.runs_done:,} |",
        f"| all deprovision calls answered (sessions dead, runs queued) | {result.trigger_seconds:.1f} s |",
        f"| **first call → every run done, every receipt written** | **{result.total_seconds:.1f} s** |",
        f"| pipeline agents/s | {result.agents_per_second:.1f} |",
        f"| baseline (direct connector calls) agents/s | {result.baseline_agents_per_second:.1f} |",
        f"| pipeline ÷ baseline | {result.agents_per_second / result.baseline_agents_per_second:.2f}× |",
        "",
        f"Goal: {OFFBOARDING_GOAL_AGENTS:,} agents in < {OFFBOARDING_GOAL_SECONDS:.0f} s: "
        f"{'meets' if goal else '**misses**'} it. Every run done and every step's receipt written: "
        f"{'yes' if complete else '**no**'}.",
        "",
    ]


def audit_section(result: AuditBenchResult) -> list[str]:
    lines = [
        "## 5. Access log: durable writes, verification, search",
        "",
        "Sources: `bench/audit.py`. SQLite in WAL mode with `synchronous=FULL` (the gateway's setting); PostgreSQL 15 "
        "with `fsync` and `synchronous_commit` on (unlike the other sections' throwaway cluster). Every record is "
        "the size of a proxied request's (agent, channel, path, subject, action).",
        "",
        "### Writes",
        "",
        "Request records go through the proxy's path (`AuditLog.submit`, one transaction per batch of up to 500) "
        "with the sealer running beside it; the clock stops when every record is committed **and chained**. "
        "State-change records go through `AuditLog.write` (strict: the action waits for its own transaction), "
        "32 writers at once. Baseline, same run and database: the same rows inserted by the bare driver "
        "(`sqlite3` / `asyncpg` `executemany`, 500 a transaction, nothing chained).",
        "",
        "| database | records | path | records/s | bare driver records/s | goal ≥ 5,000/s |",
        "|---|---:|---|---:|---:|---|",
    ]
    for row in result.writes:
        base = f"{row.records / row.baseline_seconds:,.0f}" if row.baseline_seconds else "–"
        goal = ("meets" if row.rate >= 5000 else "**misses**") if row.baseline_seconds else "(not a goal)"
        lines.append(f"| {row.database} | {row.records:,} | {row.mode} | {row.rate:,.0f} | {base} | {goal} |")
    lines += [
        "",
        "### `audit verify` of the whole chain",
        "",
        "Records written in batches, sealed, one signed checkpoint, then `verify_chain` from the first record to the "
        "head (content hash, link and checkpoint of every record). Baseline: reading the same rows in chain order "
        "without hashing.",
        "",
        "| database | records | sealing | verify | read only (baseline) | records/s verified | goal < 10 s |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for v in result.verify:
        goal = "meets" if v.verify_seconds < 10 and v.ok else "**misses**"
        lines.append(
            f"| {v.database} | {v.records:,} | {v.seal_seconds:.1f} s | **{v.verify_seconds:.1f} s** | "
            f"{v.scan_seconds:.1f} s | {v.records / v.verify_seconds:,.0f} | {goal}{'' if v.ok else ' (FAILED)'} |"
        )
    search = result.search
    if search is not None:
        got = search.latencies_ms
        raw = search.baseline_ms
        p99 = _pct(got, 99)
        lines += [
            "",
            f"### Search over {search.records:,} records (PostgreSQL)",
            "",
            f"{search.records:,} records of {search.agents:,} agents over 30 days, generated inside PostgreSQL "
            f"({search.load_seconds:.0f} s with the indexes, then `VACUUM ANALYZE`). {len(got):,} searches through "
            "`AccessLogRepository.search` (the path of `channelgate audit search` and the admin API) for a random "
            "agent and a random one-day window, newest 100 first (index `ix_access_log_agent_time`). Baseline: the "
            "same statement through bare asyncpg on one connection.",
            "",
            "| measured | searches | p50 ms | p95 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|---:|---:|",
            f"| **search** | {len(got):,} | {_pct(got, 50):.1f} | {_pct(got, 95):.1f} | {p99:.1f} | {max(got):.1f} |",
            f"| bare asyncpg (baseline) | {len(raw):,} | {_pct(raw, 50):.1f} | {_pct(raw, 95):.1f} | "
            f"{_pct(raw, 99):.1f} | {max(raw):.1f} |",
            "",
            f"Rows per search: {min(search.rows_returned)}–{max(search.rows_returned)}. **p99 {p99:.1f} ms** "
            f"(goal < 200 ms: {'meets' if p99 < 200 else '**misses**'} it).",
        ]
    return [*lines, ""]


def _pct(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(percent / 100 * len(ordered)) - 1))]


def render(
    *,
    machine: dict[str, str],
    date: str,
    command: str,
    elapsed: float,
    throughput: ThroughputResult | None,
    revocation: RevocationResult | None,
    quick: bool,
    scim: ScimResult | None = None,
    scim_disable: ScimDisableResult | None = None,
    offboarding: OffboardingResult | None = None,
    audit: AuditBenchResult | None = None,
    ldap: LdapBenchResult | None = None,
    policies: PolicyBenchResult | None = None,
    forward_auth: ForwardAuthResult | None = None,
    load: LoadResult | None = None,
    scaling: ScalingResult | None = None,
    kept: dict[str, list[str]] | None = None,
) -> str:
    """The whole page; ``kept`` holds the previous page's sections (by heading number) of benchmarks skipped
    in this run, shown as they were, each still carrying the date of the run that measured it."""
    kept = kept or {}
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench.run`); do not edit by hand, run it again. "
        "Every figure is compared with baselines measured in the same run on the same machine, because absolute "
        "figures on a small shared machine move by ±15 % from run to run.",
        "",
    ]
    if quick:
        lines += ["> **Quick smoke run (`--quick`)**: short durations and few trials; not for comparison.", ""]
    lines += [
        f"- Date: {date}",
        f"- Command: `{command}` ({elapsed / 60:.1f} min)",
        *(f"- {name}: {value}" for name, value in machine.items()),
        "- Every server (nginx, the proxies, the gateways, Redis, PostgreSQL, the provider) and the load generator "
        "run on this one machine; each Python server is a single process (one uvicorn worker).",
        "",
    ]
    lines += throughput_section(throughput) if throughput is not None else kept.get("1", [])
    lines += revocation_section(revocation) if revocation is not None else kept.get("2", [])
    if scim is not None:
        lines += scim_section(scim)
        if scim_disable is not None and scim_disable.last_refusal:
            lines += scim_disable_section(scim_disable)
    else:
        lines += kept.get("3", [])
    lines += offboarding_section(offboarding) if offboarding is not None else kept.get("4", [])
    lines += audit_section(audit) if audit is not None else kept.get("5", [])
    lines += ldap_section(ldap) if ldap is not None else kept.get("6", [])
    lines += policy_section(policies) if policies is not None else kept.get("7", [])
    lines += forward_auth_section(forward_auth) if forward_auth is not None else kept.get("8", [])
    lines += load_section(load) if load is not None else kept.get("9", [])
    lines += scaling_section(scaling) if scaling is not None else kept.get("10", [])
    lines += [
        "## Reproduce",
        "",
        "`make bench` (about 30 minutes on the machine above), or `python -m bench.run --help` for durations, "
        "rounds and trial counts; "
        "`python -m bench.run --quick` is a smoke run of a few minutes. The sources are in `bench/`: `bare_proxy.py` "
        "(the baseline proxy), `nginx.py`, `wrk.py`, `stack.py` (gateway processes and the real login), "
        "`throughput.py`, `revocation.py`, `scim.py`, `offboarding.py`, `audit.py`, `ldap.py`, `policies.py`, "
        "`forward_auth.py` (with `trivial_auth.py`, `raw_auth.py`, `forward_auth_cpu.py`, "
        "`forward_auth_revocation.py`), `client_pauses.py`, `load.py` (with `load_stack.py`, `load_nginx.py`, "
        "`load_wrk.py` + `load_wrk.lua`, `load_ws.py`, `load_checks.py`, `load_report.py`), `scaling.py` (with "
        "`cpu_cap.py`), `procstat.py`. A run with `--skip` keeps the skipped sections of the previous page, marked "
        "with the date they were measured.",
        "",
    ]
    return "\n".join(lines)
