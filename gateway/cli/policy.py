"""``policy validate|test``: the policy set checked against the schema, and its case tables run (both in CI).

    channelgate policy validate [PATH ...]              the configured set ([policies] paths) or the given paths
    channelgate policy test [CASES ...] [--policies PATH ...]   case files (policies/tests/*.toml)

``validate`` exits 2 naming every problem (file:line, policy id); ``test`` exits 1 when a case fails.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gateway.cli.common import Subparsers, settings_of
from policies.cases import case_files, read_case_file, run_case_file
from policies.loader import default_policy_dir, load, read_sources


def _configured_paths(args: argparse.Namespace) -> list[Path]:
    if args.paths:
        return [Path(p) for p in args.paths]
    if args.config or os.environ.get("CHANNELGATE_CONFIG") or Path("channelgate.toml").exists():
        return list(settings_of(args).policies.paths) or [default_policy_dir()]
    return [default_policy_dir()]


def cmd_policy_validate(args: argparse.Namespace) -> int:
    bundle = load(read_sources(_configured_paths(args)))
    print(f"{len(bundle.policies)} policies in {len(bundle.sources)} files are valid (set {bundle.digest[:16]})")
    for policy in bundle.policies:
        scope = f"channel {policy.channel}" if policy.channel else "every channel"
        print(f"  {policy.effect:7} {policy.id:40} {scope:22} {policy.source}:{policy.line}")
    return 0


def cmd_policy_test(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.cases] or [Path(str(default_policy_dir().parent / "tests"))]
    override = [Path(p) for p in args.policies] or None
    failed = total = 0
    for path in case_files(paths):
        case_file = read_case_file(path)
        for result in run_case_file(case_file, override):
            total += 1
            if result.passed:
                print(f"ok    {path.name}: {result.case.name}")
            else:
                failed += 1
                print(f"FAIL  {path.name}: {result.case.name}: {result.describe()}")
    if total == 0:
        print("no policy cases found")
        return 1
    print(f"{total - failed} passed, {failed} failed")
    return 1 if failed else 0


def register(sub: Subparsers) -> None:
    policy = sub.add_parser("policy", help="check the Cedar policy set and run its case tables")
    commands = policy.add_subparsers(dest="policy_command", required=True)
    validate = commands.add_parser("validate", help="parse and validate the policy set against the schema")
    validate.add_argument("paths", nargs="*", help="policy directories or files (default: [policies] paths)")
    validate.set_defaults(func=cmd_policy_validate)
    test = commands.add_parser("test", help="run table-style policy cases (TOML)")
    test.add_argument("cases", nargs="*", help="case files or directories (default: the packaged policies/tests)")
    test.add_argument("--policies", nargs="*", default=[], help="test these policy paths instead of each file's")
    test.set_defaults(func=cmd_policy_test)
