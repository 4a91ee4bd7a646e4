"""The session data the shared store writes, read back: the same stored text gives the same immutable object
(decoded once), a changed text is decoded anew."""

from __future__ import annotations

import dataclasses

from gateway.sessions.base import SessionData
from gateway.sessions.redis_codec import decode_data, encode_data

ALICE = SessionData(
    "agent-1", "alice", "https://idp.example", "sub-1", frozenset({"chat-agents"}), "sid-1", "id.token.x",
    "urn:mfa", ("pwd", "otp"), 1_700_000_000.0, ("7@1700000000000000",),
)  # fmt: skip


def test_stored_data_reads_back_field_for_field() -> None:
    assert decode_data(encode_data(ALICE)) == ALICE


def test_the_same_stored_text_read_twice_gives_the_same_object() -> None:
    """Each read from Redis is a new string with the same text: decoded once."""
    first = decode_data(encode_data(ALICE))
    assert decode_data("".join(encode_data(ALICE))) is first


def test_a_changed_text_is_decoded_anew_never_served_from_the_kept_one() -> None:
    before = decode_data(encode_data(ALICE))
    moved = dataclasses.replace(ALICE, groups=frozenset({"phone-agents"}))
    after = decode_data(encode_data(moved))
    assert after is not before and after.groups == frozenset({"phone-agents"})
    assert before.groups == frozenset({"chat-agents"})
