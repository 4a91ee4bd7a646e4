"""What every command shares: its settings and JSON output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.settings import Settings, load_settings

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction


def settings_of(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config) if args.config else None)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=str))
