"""``channelgate`` — the command line for operators.

    channelgate serve                        run the gateway (migrates the database first)
    channelgate check-config FILE            validate a configuration, naming every bad field
    channelgate migrate                      bring the database schema up to date
    channelgate agents deprovision AGENT --reason TEXT [--successor USER] [--wait [S]]
    channelgate agents status AGENT          the agent, its sessions and every pipeline step per channel
    channelgate deprovision list [--state held|attention|running|done|superseded]
    channelgate deprovision approve RUN... | --all    release runs held by the mass-deletion guard
    channelgate deprovision retry RUN        fresh budget for a run's dead/failed/blocked steps
    channelgate deprovision work [--within S]        run due steps here until none is due
    channelgate channels set-credential CHANNEL   (reads the credential from standard input)
    channelgate channels set-agent-password CHANNEL AGENT   (a cookie_jar console's own password, from stdin)
    channelgate vault generate-key
    channelgate vault rotate
    channelgate audit tail [-n N] [--follow]
    channelgate audit search [--agent A] [--channel C] [--subject S] [--action A] [--decision D] [--kind K]
                             [--since ISO] [--until ISO] [--limit N] [--before CURSOR] [--json]
    channelgate audit export --format jsonl|cef|syslog|ocsf [same filters] [--output FILE]
    channelgate report agent AGENT [--format html|json] [--output FILE]   offboarding evidence, final check
    channelgate report monthly YYYY-MM [--format html|json] [--output FILE]   the PIPA monthly review
    channelgate scim-tokens create NAME | list | revoke NAME   (one bearer token per IdP client)
    channelgate ldap sync [--dry-run] [--json]   reconcile with the [ldap] directory now (or print the plan)
    channelgate ldap status                  last syncs, change feed, quarantine (exit 3 while one is held)
    channelgate ldap approve QUARANTINE [--actor WHO]   release a sync held for disabling too many agents
    channelgate ldap set-bind-password       (reads the directory's bind password from stdin; vault-sealed)
    channelgate policy validate [PATH ...]   parse and validate the Cedar policy set against the schema
    channelgate policy test [CASES ...] [--policies PATH ...]   run the policy case tables (exit 1 on a failure)

The configuration file comes from ``--config`` or ``CHANNELGATE_CONFIG`` (default ``channelgate.toml``).
Exit codes: 0 ok, 1 the action failed, 2 bad usage or configuration, 3 ``deprovision work`` stopped with
steps still due (``ldap status``: a sync is quarantined).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.cli import agents, audit, ldap, policy, reports, scim_tokens, secrets, setup
from gateway.errors import ChannelgateError, ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="channelgate", description="identity and access gateway for channel consoles")
    parser.add_argument("--config", help="configuration file (default: $CHANNELGATE_CONFIG or channelgate.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (setup, agents, secrets, audit, reports, scim_tokens, ldap, policy):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"channelgate: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except ChannelgateError as exc:
        print(f"channelgate: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
