"""What the shared session store writes: a session's data and a revocation, as JSON."""

from __future__ import annotations

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
        },
        separators=(",", ":"),
    )


def decode_data(raw: str) -> SessionData:
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


def decode_revocation(raw: str) -> Revocation:
    value = json.loads(raw)
    refresh = value.get("refresh") is True
    # A replica of an earlier release reads a session's end as the refresh it is sent as (it closes nothing).
    ended = value.get("session")
    return Revocation(
        str(value["agent_id"]),
        str(value["revocation_id"]),
        str(value["origin"]),
        refresh,
        str(ended) if ended is not None else None,
    )
