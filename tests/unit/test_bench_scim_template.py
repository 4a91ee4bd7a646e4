"""The SCIM benchmark's agent rows are built by the gateway's own SCIM mapping (bench/scim.py): when the models change,
this breaks here, in `make test`, not half an hour into `make bench` (it did once: an email model of our own)."""

from __future__ import annotations

import json

from bench.scim import _template, user_name


def test_the_scim_benchmarks_agent_row_is_built_by_the_current_scim_models() -> None:
    row = json.loads(_template())
    assert row["user_name"] == user_name(0)
    assert user_name(0) in json.dumps(row)
