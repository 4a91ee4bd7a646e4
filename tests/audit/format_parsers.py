"""Parsers written from each export format's specification, for the tests: CEF (ArcSight rev. 25) and RFC 5424
syslog (§6 ABNF). Each also decodes channelgate's documented ``\\xHH`` / ``\\uHHHH`` escapes of control
characters, in the same single pass as the format's own escapes (a literal backslash is always escaped, so the
two cannot be confused)."""

from __future__ import annotations

import re
from typing import Any

# --- a CEF parser from "Implementing ArcSight CEF" rev. 25 -------------------------------------------------------

_CEF_VALUE_ESCAPES = {"\\": "\\", "=": "=", "r": "\r", "n": "\n"}


def _cef_unescape(text: str, escapes: dict[str, str]) -> str:
    """Single pass over the spec's escapes, plus channelgate's documented ``\\xHH`` / ``\\uHHHH`` for controls."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following in escapes:
            out.append(escapes[following])
            i += 2
        elif following == "x":
            out.append(chr(int(text[i + 2 : i + 4], 16)))
            i += 4
        elif following == "u":
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
        else:
            raise AssertionError(f"an escape CEF does not define: {text[i : i + 2]!r}")
    return "".join(out)


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """(seven header fields, extension) — header split at unescaped pipes, extension at `` key=``."""
    header: list[str] = []
    field: list[str] = []
    i = 0
    while len(header) < 7:
        char = line[i]
        if char == "\\":
            field.append(line[i : i + 2])
            i += 2
        elif char == "|":
            header.append(_cef_unescape("".join(field), {"\\": "\\", "|": "|"}))
            field = []
            i += 1
        else:
            field.append(char)
            i += 1
    extension = line[i:]
    # A key starts the extension or follows a space, and is followed by an unescaped '='.
    starts = [m for m in re.finditer(r"(?:^| )([A-Za-z0-9_]+)=", extension) if not _escaped(extension, m.end() - 1)]
    pairs: dict[str, str] = {}
    for n, match in enumerate(starts):
        end = starts[n + 1].start() if n + 1 < len(starts) else len(extension)
        key = match.group(1)
        assert key not in pairs, f"key {key} appears twice"
        raw = extension[match.end() : end]
        pairs[key] = _cef_unescape(raw, _CEF_VALUE_ESCAPES)
    return header, pairs


def _escaped(text: str, index: int) -> bool:
    backslashes = 0
    while index - 1 - backslashes >= 0 and text[index - 1 - backslashes] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


# --- an RFC 5424 parser (§6 ABNF) ---------------------------------------------------------------------------------

_HEADER = re.compile(
    r"<(\d{1,3})>1 (\S+) ([\x21-\x7e]{1,255}) ([\x21-\x7e]{1,48}) ([\x21-\x7e]{1,128}) ([\x21-\x7e]{1,32}) "
)


def parse_syslog(line: str) -> dict[str, Any]:
    header = _HEADER.match(line)
    assert header is not None, line[:200]
    i = header.end()
    elements: list[tuple[str, dict[str, str]]] = []
    if line[i] == "-":
        i += 1
    while i < len(line) and line[i] == "[":
        match = re.compile(r"[^ =\]\"]{1,32}").match(line, i + 1)
        assert match is not None
        sd_id, i = match.group(), match.end()
        params: dict[str, str] = {}
        while line[i] == " ":
            name = re.compile(r"[^ =\]\"]{1,32}").match(line, i + 1)
            assert name is not None and line[name.end() : name.end() + 2] == '="', line[i : i + 80]
            i = name.end() + 2
            value: list[str] = []
            while line[i] != '"':
                if line[i] == "\\":
                    following = line[i + 1]
                    if following in '"\\]':  # RFC 5424 §6.3.3
                        value.append(following)
                        i += 2
                    elif following == "x":
                        value.append(chr(int(line[i + 2 : i + 4], 16)))
                        i += 4
                    elif following == "u":
                        value.append(chr(int(line[i + 2 : i + 6], 16)))
                        i += 6
                    else:
                        raise AssertionError("a lone backslash: §6.3.3 keeps it, channelgate never writes one")
                else:
                    assert line[i] != "]", "an unescaped ']' inside PARAM-VALUE"
                    value.append(line[i])
                    i += 1
            assert name.group() not in params, f"PARAM {name.group()} twice"
            params[name.group()] = "".join(value)
            i += 1
        assert line[i] == "]"
        i += 1
        elements.append((sd_id, params))
    message = line[i + 1 :] if i < len(line) else ""
    assert i == len(line) or line[i] == " "
    return {
        "pri": int(header.group(1)),
        "timestamp": header.group(2),
        "hostname": header.group(3),
        "app_name": header.group(4),
        "procid": header.group(5),
        "msgid": header.group(6),
        "sd": elements,
        "msg": message,
    }
