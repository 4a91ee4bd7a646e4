"""The syntax of SCIM filters (RFC 7644 §3.4.2.2): our tokenizer and scim2-filter-parser's grammar, rebuilt.

scim2-filter-parser's lexer reads one-digit numbers only, no escaped quotes and ``true`` as the string
``'TRUE'``, and its parser gives ``and`` and ``or`` the same precedence. Here our tokenizer (JSON literals, size
and nesting limits enforced before parsing) feeds its grammar rebuilt with the RFC's precedence. What the tree
means in SQL is ``scim.filters``' business.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from scim2_filter_parser.parser import SCIMParser, SCIMParserError
from sly.lex import Token  # type: ignore[import-untyped]
from sly.yacc import ParserMeta  # type: ignore[import-untyped]

from scim.errors import InvalidFilter

#: Longer filters are refused before parsing; IdPs send one or two comparisons.
MAX_FILTER_LENGTH: Final = 4096
#: Deepest nesting of parentheses and brackets.
MAX_FILTER_DEPTH: Final = 16
#: Most attribute comparisons in one filter; bounds the tree (and the SQL) before the walk recurses over it.
MAX_FILTER_TERMS: Final = 64


# ---------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class CompValue:
    """A compValue (JSON ``false``/``null``/``true``/number/string, RFC 7644 §3.4.2.2) and how it was written."""

    value: str | bool | int | float | None
    text: str


_KEYWORDS: Final = {
    **{op: op.upper() for op in ("eq", "ne", "co", "sw", "ew", "pr", "gt", "ge", "lt", "le", "and", "or", "not")},
}
_JSON_LITERALS: Final[Mapping[str, tuple[str, bool | None]]] = {
    "true": ("TRUE", True),
    "false": ("FALSE", False),
    "null": ("NULL", None),
}
_PUNCTUATION: Final = {"(": "LPAREN", ")": "RPAREN", "[": "LBRACKET", "]": "RBRACKET"}
_COMPARISONS: Final = frozenset({"EQ", "NE", "CO", "SW", "EW", "PR", "GT", "GE", "LT", "LE"})
_SCANNER: Final = re.compile(
    r"""
      (?P<space>[ ]+)
    | (?P<punct>[()\[\]])
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)(?![A-Za-z0-9_.:$-])
    | (?P<subattr>\.[A-Za-z][A-Za-z0-9_-]*)
    | (?P<word>[A-Za-z][A-Za-z0-9_.:-]*)
    """,
    re.VERBOSE,
)
# attrPath = [URI ":"] ATTRNAME *1subAttr (RFC 7644 §3.4.2.2, Figure 1)
_ATTR_PATH: Final = re.compile(r"([A-Za-z][A-Za-z0-9_-]*)(?:\.([A-Za-z][A-Za-z0-9_-]*))?")
_SCHEMA_URI: Final = re.compile(r"[A-Za-z][A-Za-z0-9._-]*(?::[A-Za-z0-9._-]+)+")
_UNENCODABLE: Final = re.compile("[\x00\ud800-\udfff]")


def _token(kind: str, value: object, index: int, end: int) -> Token:
    token = Token()
    token.type, token.value, token.lineno, token.index, token.end = kind, value, 1, index, end
    return token


def json_string(lexeme: str, index: int) -> CompValue:
    """A JSON string (RFC 7159 §7): ``\\"`` and ``\\u`` escapes work; NUL and lone surrogates cannot reach SQL."""
    try:
        value = json.loads(lexeme)
    except ValueError:
        raise InvalidFilter(
            f'the string at position {index} is not a valid JSON string (escape quotes as \\", control characters '
            "as \\uXXXX)"
        ) from None
    if _UNENCODABLE.search(value):
        raise InvalidFilter(f"the string at position {index} contains a NUL character or an unpaired surrogate")
    return CompValue(value, lexeme)


def _word(word: str, index: int) -> Iterator[Token]:
    end = index + len(word)
    lowered = word.lower()
    if lowered in _KEYWORDS:  # attribute operators and logical operators are case-insensitive (RFC 7644 §3.4.2.2)
        yield _token(_KEYWORDS[lowered], lowered, index, end)
        return
    if lowered in _JSON_LITERALS:
        if word != lowered:
            raise InvalidFilter(f"{word!r} at position {index}: the literals true, false and null are lower case")
        kind, value = _JSON_LITERALS[lowered]
        yield _token(kind, CompValue(value, word), index, end)
        return
    uri, _, path = word.rpartition(":")
    match = _ATTR_PATH.fullmatch(path)
    if match is None or (uri and not _SCHEMA_URI.fullmatch(uri)):
        raise InvalidFilter(f"{word!r} at position {index} is not an attribute path such as name.givenName")
    if uri:
        yield _token("SCHEMA_URI", uri, index, index + len(uri))
    yield _token("ATTRNAME", match[1], end - len(path), end)
    if match[2]:
        yield _token("SUBATTR", match[2], end - len(match[2]) - 1, end)


def _tokenize(text: str) -> list[Token]:
    """Split a filter into the parser's tokens, enforcing the nesting and size limits before any parsing."""
    tokens: list[Token] = []
    depth = 0
    position = 0
    while position < len(text):
        match = _SCANNER.match(text, position)
        if match is None:
            raise InvalidFilter(f"unexpected character {text[position]!r} at position {position} of the filter")
        kind, lexeme, end = match.lastgroup, match.group(), match.end()
        if kind == "punct":
            if lexeme == "[" and tokens and tokens[-1].type == "SUBATTR":
                raise InvalidFilter(
                    f"at position {position}: brackets follow the multi-valued attribute, as in "
                    'emails[type eq "work"].value'
                )
            depth += 1 if lexeme in "([" else -1
            if depth > MAX_FILTER_DEPTH:
                raise InvalidFilter(f"the filter nests deeper than {MAX_FILTER_DEPTH} parentheses or brackets")
            tokens.append(_token(_PUNCTUATION[lexeme], lexeme, position, end))
        elif kind == "string":
            tokens.append(_token("COMP_VALUE", json_string(lexeme, position), position, end))
        elif kind == "number":
            tokens.append(_token("NUMBER", CompValue(json.loads(lexeme), lexeme), position, end))
        elif kind == "subattr":
            tokens.append(_token("SUBATTR", lexeme[1:], position, end))
        elif kind == "word":
            tokens.extend(_word(lexeme, position))
        position = end
    if sum(token.type in _COMPARISONS for token in tokens) > MAX_FILTER_TERMS:
        raise InvalidFilter(f"the filter has more than {MAX_FILTER_TERMS} comparisons")
    return tokens


# ---------------------------------------------------------------------------------------------- parser


def _syntax_error(parser: object, token: Token | None) -> None:
    if token is None:
        raise InvalidFilter("the filter ends too early (an operator, value or closing bracket is missing)")
    shown = token.value.text if isinstance(token.value, CompValue) else token.value
    raise InvalidFilter(f"unexpected {shown!r} at position {token.index} of the filter")


def _rfc_parser() -> type[Any]:
    """scim2-filter-parser's grammar with "not" above "and" above "or" (RFC 7644 §3.4.2.2) and our error."""
    namespace = ParserMeta.__prepare__("RfcScimParser", (SCIMParser,))
    for name in ("tokens", "filter", "value_path", "attr_exp", "log_exp", "comp_value", "attr_path", "sub_attr"):
        dict.__setitem__(namespace, name, SCIMParser.__dict__[name])
    dict.__setitem__(namespace, "precedence", (("left", "OR"), ("left", "AND"), ("right", "NOT")))
    dict.__setitem__(namespace, "error", _syntax_error)
    dict.__setitem__(namespace, "__module__", __name__)
    parser: type[Any] = ParserMeta("RfcScimParser", (SCIMParser,), namespace)
    return parser


_PARSER: Final = _rfc_parser()


def parse_filter(text: str) -> Any:
    """The filter's syntax tree (scim2-filter-parser's AST), or ``InvalidFilter`` naming what is wrong."""
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidFilter(f"the filter is {len(text)} characters long; at most {MAX_FILTER_LENGTH} are accepted")
    tokens = _tokenize(text)
    if not tokens:
        raise InvalidFilter("the filter is empty")
    try:
        return _PARSER().parse(iter(tokens))
    except SCIMParserError:  # raised by the grammar for "a[...].b[...]"-like paths
        raise InvalidFilter("a value filter [...] may appear once in an attribute path") from None
