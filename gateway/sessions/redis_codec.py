"""What the shared session store writes: a session's data and a revocation, as JSON."""

from __future__ import annotations

import functools
import json

from gateway.sessions.base import Revocation, SessionData


def encode_data(data: SessionData) -> str:
    return json.dumps(
        {
            "agent_id": data.agent_id,
            "user_name": data.user_name,
            "issuer": data.issuer,
            "subject": data.subject,
            "groups": sorted(data.groups),
            "idp_session_id": data.idp_session_id,
            "id_token": data.id_token,
            "acr": data.acr,
            "amr": list(data.amr),
            "auth_time": data.auth_time,
            # Last, and only when set: the groups splice (redis_scripts.UPDATE_GROUPS_SCRIPT) keeps every other byte.
            **({"after_ends": list(data.after_ends)} if data.after_ends else {}),
        },
        separators=(",", ":"),
    )


#: Sessions whose decoded data is kept, by their stored text (a few KB each, the ID token included).
DECODED = 8192


@functools.lru_cache(maxsize=DECODED)
def decode_data(raw: str) -> SessionData:
    """The data stored as ``raw``. Every request reads its session's unchanged text again (the idle clock is kept
    beside it): the same text gives the same immutable ``SessionData`` object without parsing the JSON again, and
    the forward-auth memo's comparison of the data it decided with is then an identity check."""
    value = json.loads(raw)
    return SessionData(
        agent_id=value["agent_id"],
        user_name=value["user_name"],
        issuer=value["issuer"],
        subject=value["subject"],
        groups=frozenset(value["groups"]),
        idp_session_id=value["idp_session_id"],
        id_token=value["id_token"],
        acr=value["acr"],
        amr=tuple(value["amr"]),
        auth_time=value["auth_time"],
        after_ends=tuple(str(key) for key in value.get("after_ends", ())),  # absent in earlier releases' sessions
    )


def encode_revocation(revocation: Revocation) -> str:
    message: dict[str, str | bool] = {
        "agent_id": revocation.agent_id,
        "revocation_id": revocation.revocation_id,
        "origin": revocation.origin_replica,
    }
    if revocation.refresh_only:
        message["refresh"] = True
    if revocation.ended_session is not None:
        message["session"] = revocation.ended_session
    return json.dumps(message)


def decode_revocation(raw: str | bytes) -> Revocation:
    """The broadcast as sent by ``encode_revocation``; ValueError for anything else (another release's message, a
    stray tool publishing on the channel), which the listener skips: it must never end the listener."""
    try:
        value = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    fields = [value.get("agent_id"), value.get("revocation_id"), value.get("origin")]
    # A replica of an earlier release reads a session's end as the refresh it is sent as (it closes nothing).
    ended = value.get("session")
    if not all(isinstance(field, str) and field for field in fields) or not isinstance(ended, str | None):
        raise ValueError("a revocation names its agent, its id and its origin as strings")
    agent_id, revocation_id, origin = (str(field) for field in fields)
    return Revocation(agent_id, revocation_id, origin, value.get("refresh") is True, ended)
