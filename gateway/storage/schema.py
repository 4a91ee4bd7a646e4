"""The relational schema: one database for agents, groups, channel credentials and the access log.

SCIM users *are* agents (issue 3), LDAP sync writes the same rows (issue 6), and OIDC logins link to them by
(issuer, subject) (ASVS 6.8.1). Alembic migrations in ``migrations/versions`` create exactly these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite stores BIGINT primary keys as INTEGER only when declared so; this keeps autoincrement on both.
SeqType = BigInteger().with_variant(Integer(), "sqlite")

agents = Table(
    "agents",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_name", String(256), nullable=False),
    #: Lower-cased userName: SCIM (RFC 7643 §4.1.1) treats userName case-insensitively; uniqueness is on this.
    Column("user_name_key", String(256), nullable=False),
    Column("external_id", String(256)),
    Column("display_name", String(256)),
    Column("email", String(320)),
    Column("employee_number", String(64)),
    Column("manager_id", String(256)),
    Column("active", Boolean, nullable=False, default=True),
    #: Soft delete (RFC 7644 §3.6): a deleted agent answers 404 and frees its userName for a rehire.
    Column("deleted_at", DateTime(timezone=True)),
    Column("disabled_reason", Text),
    Column("oidc_issuer", String(512)),
    Column("oidc_subject", String(256)),
    #: Who manages the record: "oidc" (created at first login), "scim", "ldap", "admin".
    Column("source", String(16), nullable=False, default="oidc"),
    Column("attributes", JSON, nullable=False, default=dict),
    Column("version", Integer, nullable=False, default=1),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    #: When the agent was last made active again (SCIM, the directory, an admin), not merely updated: a Shared
    #: Signals disable issued before it is stale (gateway/signals/receiver.py). None: never since it was created.
    Column("enabled_at", DateTime(timezone=True)),
    UniqueConstraint("oidc_issuer", "oidc_subject"),
)
# Unique userName among live agents only, so a deleted agent's userName can be reused (rehire).
Index(
    "uq_agents_live_user_name_key",
    agents.c.user_name_key,
    unique=True,
    sqlite_where=agents.c.deleted_at.is_(None),
    postgresql_where=agents.c.deleted_at.is_(None),
)
Index("ix_agents_external_id", agents.c.external_id)

groups = Table(
    "groups",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("display_name", String(256), nullable=False),
    Column("external_id", String(256)),
    Column("source", String(16), nullable=False, default="scim"),
    Column("version", Integer, nullable=False, default=1),
    Column("deleted_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_id", String(36), ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("agent_id", String(36), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
)
Index("ix_group_members_agent_id", group_members.c.agent_id)

# Groups are looked up by displayName (Okta Group Push, Entra matching); not unique, as RFC 7643 §4.2 allows.
Index("ix_groups_display_name", groups.c.display_name)

#: One bearer token per SCIM client (IdP). Only the SHA-256 of the token is kept: a dump of the table holds no
#: usable credential, and the tokens carry 256 bits from ``secrets``, so an unsalted hash is enough.
scim_tokens = Table(
    "scim_tokens",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
)

channel_credentials = Table(
    "channel_credentials",
    metadata,
    Column("channel", String(64), primary_key=True),
    #: The vault key that encrypted it, so rotation can re-encrypt key by key.
    Column("key_id", String(64), nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

access_log = Table(
    "access_log",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    #: "request" for proxied requests; "login", "login_failed", "logout", "expired", "deprovision", ... otherwise.
    Column("kind", String(32), nullable=False),
    Column("request_id", String(64)),
    Column("agent_id", String(36)),
    Column("agent_name", String(256)),
    Column("source_ip", String(64)),
    Column("channel", String(64)),
    Column("method", String(16)),
    #: The path without query values (query keys only), so personal data in queries stays out of the log.
    Column("path", Text),
    Column("status", Integer),
    Column("decision", String(16)),
    Column("reason", Text),
    Column("bytes_in", BigInteger),
    Column("bytes_out", BigInteger),
    Column("duration_ms", Integer),
    Column("actor", String(256)),
    Column("detail", JSON),
    #: The data subject (PIPA: whose personal data was accessed, e.g. a customer id), from the route's rules.
    Column("subject", String(256)),
    #: What was done to it: "view", "change", "download" or "export" (the route's rules; else by method).
    Column("action", String(16)),
    # The tamper-evident chain (gateway/audit/chain.py), filled by the sealer after the row committed:
    #: Position in the chain (1, 2, ...); NULL until sealed. Records sealed in commit order, not ``seq`` order.
    Column("chain_pos", BigInteger, unique=True),
    #: The record's hash, "cg2:" + SHA-256 over its head and ``rest_hash`` in base64url (gateway/audit/
    #: canonical.py; a bare hex SHA-256 for records of format cg1); kept when retention purges it.
    Column("content_hash", String(64)),
    #: ``hash`` of the record at ``chain_pos - 1`` (64 zeros for the first).
    Column("prev_hash", String(64)),
    #: SHA-256 over (prev_hash, chain_pos, content_hash).
    Column("hash", String(64)),
    #: True once retention removed the record's content: its stub keeps the chain verifiable.
    Column("purged", Boolean, nullable=False, default=False, server_default="0"),
    #: Set by retention on a purged stub: the hash of the content it removed, from which ``audit verify``
    #: recomputes ``content_hash`` with the stub's seq, time and kind. NULL on every other record.
    Column("rest_hash", String(43)),
)
Index("ix_access_log_agent_time", access_log.c.agent_id, access_log.c.time)
Index("ix_access_log_time", access_log.c.time)
Index("ix_access_log_subject_time", access_log.c.subject, access_log.c.time)
#: The sealer's work list: only unsealed rows, so finding them costs nothing however long the log grows.
Index(
    "ix_access_log_unsealed",
    access_log.c.seq,
    sqlite_where=access_log.c.chain_pos.is_(None),
    postgresql_where=access_log.c.chain_pos.is_(None),
)

#: Signed checkpoints of the chain (gateway/audit/checkpoints.py). The copy that proves anything is the one in
#: the sink outside the database; this table says which were made and whether the sink has them.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("number", BigInteger, primary_key=True, autoincrement=False),
    Column("chain_pos", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("key_id", String(64), nullable=False),
    #: The checkpoint exactly as signed and as written to the sink (one JSON line).
    Column("document", Text, nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
)

#: Where a purge cut the chain: the position and hash of the last record deleted outright, so verification
#: starts from there (and a signed checkpoint names the same position and hash).
audit_anchor = Table(
    "audit_anchor",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("chain_pos", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("purged_at", DateTime(timezone=True), nullable=False),
)

#: How far each SIEM forwarder has delivered (the chain position of its last acknowledged record).
audit_forwarders = Table(
    "audit_forwarders",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("chain_pos", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: Per-agent secrets a connector holds at its channel (OAuth tokens it obtained, a seat's API key, a console
#: cookie jar), sealed by the vault with "<channel>/<agent_id>/<name>" as associated data. Shared by every
#: replica, so the deprovisioning pipeline can revoke what any replica obtained.
agent_secrets = Table(
    "agent_secrets",
    metadata,
    Column("agent_id", String(36), primary_key=True),
    Column("channel", String(64), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("key_id", String(64), nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    #: Not secret: what a connector needs to decide without decrypting (expiry, token type).
    Column("meta", JSON, nullable=False, default=dict),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: One deprovisioning of one agent (issue 4). Written in the trigger's own transaction, together with the agent's
#: ``active = false`` and its steps: a transactional outbox, so a crash cannot keep the one without the others.
deprovision_runs = Table(
    "deprovision_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("agent_id", String(36), nullable=False),
    Column("user_name", String(256), nullable=False),
    #: cli, admin_api, scim, ldap, risc ...
    Column("source", String(32), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    #: Successor given by the trigger (userName); else the agent's manager, else each channel's fallback queue.
    Column("successor", String(256)),
    #: running | held (waits for an admin's approval) | done | attention (a step is dead, failed or blocked) |
    #: superseded (its agent was made active again before it finished); ``gateway.deprovision.plan.RunState``
    Column("state", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("approved_by", String(256)),
)
Index("ix_deprovision_runs_agent_id", deprovision_runs.c.agent_id, deprovision_runs.c.created_at)
Index("ix_deprovision_runs_created_at", deprovision_runs.c.created_at)

deprovision_steps = Table(
    "deprovision_steps",
    metadata,
    Column("id", SeqType, primary_key=True, autoincrement=True),
    Column("run_id", String(36), ForeignKey("deprovision_runs.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(64), nullable=False),
    #: revoke | hand_over | verify
    Column("step", String(16), nullable=False),
    #: waiting | pending | held | blocked | done | not_applicable | failed | dead | superseded
    #: (``gateway.deprovision.plan.StepState``)
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    #: A worker's claim: no other worker takes the step until ``lease_until`` has passed (a crashed worker's
    #: steps are taken over once their lease expires).
    Column("lease_owner", String(64)),
    Column("lease_until", DateTime(timezone=True)),
    Column("idempotency_key", String(128), nullable=False, unique=True),
    Column("vendor_reference", String(256)),
    Column("detail", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("run_id", "channel", "step"),
)
Index("ix_deprovision_steps_due", deprovision_steps.c.state, deprovision_steps.c.next_attempt_at)
#: The claim's search for spent steps (``attempts >= max_attempts``, nearly never any): a lookup, not a read of every
#: due step (migration 0011).
Index(
    "ix_deprovision_steps_spent",
    deprovision_steps.c.state,
    deprovision_steps.c.attempts,
    deprovision_steps.c.next_attempt_at,
)

#: Directory entries behind the agents an LDAP directory manages (issue 6), by the entry's stable id (entryUUID,
#: objectGUID): a rename or a move keeps the agent. ``disabled_by_sync``: only an agent the sync disabled is
#: reactivated when the directory enables it again.
ldap_entries = Table(
    "ldap_entries",
    metadata,
    Column("directory", String(32), primary_key=True),
    Column("entry_id", String(64), primary_key=True),
    Column("agent_id", String(36), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("dn", Text, nullable=False),
    Column("disabled_by_sync", Boolean, nullable=False, default=False),
)

#: Groups an LDAP directory manages, by the group entry's stable id.
ldap_groups = Table(
    "ldap_groups",
    metadata,
    Column("directory", String(32), primary_key=True),
    Column("entry_id", String(64), primary_key=True),
    Column("group_id", String(36), ForeignKey("groups.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("dn", Text, nullable=False),
)

#: One row per directory: the incremental sync's high-water mark, when each kind of sync last ran, the feed.
ldap_sync_state = Table(
    "ldap_sync_state",
    metadata,
    Column("directory", String(32), primary_key=True),
    Column("high_water", String(32)),
    Column("last_full_at", DateTime(timezone=True)),
    Column("last_incremental_at", DateTime(timezone=True)),
    Column("last_result", JSON),
    Column("last_error", Text),
    #: off | connecting | live | down
    Column("feed_state", String(16)),
    Column("feed_event_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: Syncs that would have disabled too many agents: held until an admin approves (``channelgate ldap approve``).
ldap_quarantines = Table(
    "ldap_quarantines",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("directory", String(32), nullable=False),
    #: held | approved
    Column("state", String(16), nullable=False),
    Column("disabling", Integer, nullable=False),
    Column("active_agents", Integer, nullable=False),
    #: [{"agent_id", "user_name", "reason"}] of the disables held.
    Column("agents", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("approved_by", String(256)),
    Column("approved_at", DateTime(timezone=True)),
)
Index("ix_ldap_quarantines_directory_state", ldap_quarantines.c.directory, ldap_quarantines.c.state)

#: Logouts of agents who stay active, remembered for the longest a session can live (gateway/deprovision/
#: logouts.py): a Redis that lost one (a restart from a snapshot, a failover to a lagging replica) brings the
#: session back valid, and nothing else says it ended. The sweep after an outage ends them again (revived.py).
session_ends = Table(
    "session_ends",
    metadata,
    Column("id", SeqType, primary_key=True, autoincrement=True),
    Column("ended_at", DateTime(timezone=True), nullable=False),
    #: logout (one session, by ``session_key``) | idp_session (the agent's sessions from the IdP session ``sid``) |
    #: agent (every session of the agent created before ``ended_at``); ``gateway.storage.session_ends.EndKind``
    Column("kind", String(16), nullable=False),
    Column("agent_id", String(36), nullable=False),
    #: The SHA-256 of the session id (``gateway.sessions.base.session_key``), never the id: not a credential.
    Column("session_key", String(64)),
    Column("sid", Text),
)
Index("ix_session_ends_ended_at", session_ends.c.ended_at)
Index("ix_session_ends_session_key", session_ends.c.session_key)
Index("ix_session_ends_agent_kind_ended_at", session_ends.c.agent_id, session_ends.c.kind, session_ends.c.ended_at)
