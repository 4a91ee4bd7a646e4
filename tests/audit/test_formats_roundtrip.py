"""Every export format survives hostile values (issue 5, item 2: log-injection safe; tests: round trip with hostile
usernames and paths): each output is parsed back by a parser written here from the format's specification, every
field comes back as it was, and no second record or field appears.

The syslog parser is ours, not syslog-rfc5424-parser from PyPI: its last release (2019) pins lark-parser 0.6, which
installs over the ``lark`` 1.x module this project's dependencies use.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gateway.audit.formats import FORMATS
from gateway.audit.formats.jsonl import record_dict
from gateway.audit.formats.syslog import Syslog
from gateway.storage.access_log import AccessRecord
from tests.audit.format_parsers import parse_cef, parse_syslog

LONG = "x" * 70_000 + "\r\nCEF:0|forged|record|1|1|1|1|"

HOSTILE = {
    "crlf": "alice\r\nCEF:0|evil|evil|1|100|forged|10|suser=root",
    "lf_syslog": 'bob\n<86>1 2026-01-01T00:00:00Z host channelgate - login [channelgate@32473 agentName="root"] x',
    "nul_and_controls": "carol\x00\x01\x07\x08\x0b\x0c\x1c\x1d\x1e\x1f\x7f\x85\x9b",
    "ansi": "\x1b[31mred\x1b[0m\x1b]0;title\x07",
    "cef_delimiters": "a|b=c\\d|e\\=f\\|g\\",
    "syslog_delimiters": 'x"] [channelgate@32473 agentName="root"] y\\]"',
    "json_breakers": '"},{"kind":"login","agent_name":"root',
    "unicode_lines": "line\u2028break\u2029para\u0085nel",
    "bidi": "admin\u202e\u2066nimda\u2069\u202c",
    "bom": "\ufeffstarts with a BOM",
    "non_ascii": "상담원 김철수 — Zoë 🙂 e\u0301",
    "escapes_as_text": "\\x1b \\u2028 \\r\\n \\\\ \\=",
    "long": LONG,
}

#: Every C0/C1 control, DEL, the Unicode line separators, bidi controls and the BOM: never raw in an output.
RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def hostile_record(value: str) -> AccessRecord:
    """Every free-text field carries the hostile value (the kind too: no field is trusted)."""
    return AccessRecord(
        time=datetime(2026, 12, 4, 9, 30, 15, 123456, tzinfo=UTC),
        kind="request",
        seq=41,
        request_id=f"req-{value}",
        agent_id="5f0c3a1e-0000-4000-8000-000000000001",
        agent_name=value,
        source_ip="2001:db8::7",
        channel=f"chat{value}",
        method="GET",
        path=f"/chat/customers/{value}?q",
        status=403,
        decision="deny",
        reason=value,
        bytes_in=12,
        bytes_out=0,
        duration_ms=3,
        actor=value,
        detail={"note": value, value[:40]: [1, value]},
        subject=value,
        action="view",
        chain_pos=40,
        content_hash="c" * 64,
        prev_hash="a" * 64,
        hash="b" * 64,
    )


def _one_line(output: str) -> None:
    assert RAW_CONTROL.search(output) is None
    assert len(output.splitlines()) == 1


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_json_lines_round_trips_every_field_of_a_hostile_record(value: str) -> None:
    record = hostile_record(value)
    output = FORMATS["jsonl"].format(record)

    _one_line(output)
    parsed = json.loads(output)
    assert parsed == json.loads(json.dumps(record_dict(record)))
    assert parsed["agent_name"] == value and parsed["path"] == record.path and parsed["detail"] == record.detail
    assert (parsed["seq"], parsed["chain_pos"], parsed["hash"], parsed["prev_hash"]) == (41, 40, "b" * 64, "a" * 64)


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_cef_round_trips_every_field_and_forges_no_key_or_record(value: str) -> None:
    record = hostile_record(value)
    output = FORMATS["cef"].format(replace(record, kind=value))

    _one_line(output)
    header, ext = parse_cef(output)
    assert header[:4] == ["CEF:0", "channelgate", "channelgate", header[3]]
    assert header[4] == value and header[6] == "7"
    assert set(ext) == {
        "rt", "c6a2", "c6a2Label", "suser", "suid", "request", "requestMethod", "cat", "act", "outcome", "reason",
        "externalId", "in", "out", "cs1", "cs1Label", "cs2", "cs2Label", "cs3", "cs3Label", "cs4", "cs4Label",
        "cs5", "cs5Label", "cs6", "cs6Label", "cn1", "cn1Label", "cn2", "cn2Label", "cn3", "cn3Label",
        "flexNumber1", "flexNumber1Label", "flexString1", "flexString1Label", "flexString2", "flexString2Label",
    }  # fmt: skip
    assert ext["rt"] == str(int(record.time.timestamp() * 1000))
    assert (ext["suser"], ext["request"], ext["reason"], ext["cs4"]) == (value, record.path, value, value)
    assert (ext["cs1"], ext["cs2"], ext["externalId"], ext["cat"]) == (record.channel, value, record.request_id, value)
    assert json.loads(ext["cs6"]) == record.detail
    assert (ext["act"], ext["outcome"], ext["c6a2"], ext["requestMethod"]) == ("deny", "failure", "2001:db8::7", "GET")
    assert (ext["cn1"], ext["cn2"], ext["flexString1"], ext["flexString2"]) == ("40", "41", "b" * 64, "a" * 64)


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_syslog_round_trips_every_field_in_one_sd_element_and_keeps_the_header_printable(value: str) -> None:
    record = hostile_record(value)
    output = Syslog(hostname=f"gw-1{value}", enterprise_number=32473).format(replace(record, kind=value))

    _one_line(output)
    parsed = parse_syslog(output)
    assert parsed["pri"] == 10 * 8 + 4  # authpriv.warning: a refusal
    assert parsed["timestamp"] == "2026-12-04T09:30:15.123456Z"
    assert parsed["app_name"] == "channelgate" and parsed["procid"] == "-"
    assert len(parsed["hostname"]) <= 255 and len(parsed["msgid"]) <= 32
    assert [sd_id for sd_id, _ in parsed["sd"]] == ["channelgate@32473"]
    params = parsed["sd"][0][1]
    assert set(params) == {
        "seq", "chainPos", "hash", "prevHash", "contentHash", "kind", "requestId", "agentId", "agentName", "src",
        "channel", "method", "path", "status", "decision", "reason", "bytesIn", "bytesOut", "durationMs", "actor",
        "subject", "action", "detail",
    }  # fmt: skip
    assert (params["agentName"], params["path"], params["reason"], params["kind"]) == (value, record.path, value, value)
    assert (params["subject"], params["actor"], params["channel"]) == (value, value, record.channel)
    assert json.loads(params["detail"]) == record.detail
    assert (params["seq"], params["chainPos"], params["hash"]) == ("41", "40", "b" * 64)
    assert not parsed["msg"].startswith("\ufeff")


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_ocsf_round_trips_the_fields_it_maps_and_keeps_the_rest_unmapped(value: str) -> None:
    record = hostile_record(value)
    output = FORMATS["ocsf"].format(record)

    _one_line(output)
    event = json.loads(output)
    assert (event["class_uid"], event["activity_id"], event["type_uid"]) == (3003, 99, 300399)
    assert event["user"] == {"name": value, "uid": record.agent_id}
    assert event["actor"]["user"]["name"] == value
    assert event["http_request"] == {"http_method": "GET", "url": {"path": record.path}}
    assert event["status_detail"] == value and event["status_id"] == 2
    unmapped = event["unmapped"]
    assert (unmapped["subject"], unmapped["channel"], unmapped["detail"]) == (value, record.channel, record.detail)
    assert (unmapped["chain_pos"], unmapped["hash"], unmapped["prev_hash"]) == (40, "b" * 64, "a" * 64)
    assert event["metadata"]["correlation_uid"] == record.request_id


def test_a_spec_only_cef_reader_never_sees_a_raw_control_character() -> None:
    """A reader that knows only CEF's own escapes gets ``\\x1b`` as text: the terminal never receives ESC."""
    record = hostile_record(HOSTILE["ansi"])
    output = FORMATS["cef"].format(record)
    assert "\x1b" not in output
    assert "suser=\\x1b[31mred\\x1b[0m\\x1b]0;title\\x07 " in output
