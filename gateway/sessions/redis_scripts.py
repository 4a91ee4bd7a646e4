"""The shared session store's keys and Lua scripts (``gateway/sessions/redis_store.py`` runs them).

Keys (the raw session id is never stored, only its SHA-256, so a dump of Redis yields no usable cookie):

    cg:s:{session_key}     hash: data (JSON), agent, created, seen, and idp (its IdP session's index key) when the
                           session has a ``sid``; TTL = min(idle, remaining absolute) + grace
    cg:a:{agent_id}        set of the agent's session keys (ended ones pruned a few at a time as it is used);
                           TTL never shorter than any of its sessions' (revoke_agent finds a session through it)
    cg:i:{sha256([iss, sid])}  sorted set of the session keys that came from one IdP session, scored in creation
                           order; TTL as the agent index's (a logout token naming only ``sid`` finds them through
                           it); at most the cap: a login beyond ends the oldest session, never just forgets it
    cg:l:{sha256(login)}   a pending OIDC login (JSON), read once with GETDEL
    cg:o:{sha256(key)}     a single-use key: its holder while claimed (short TTL), then ONCE_USED (full TTL)
    cg:replicas            sorted set: replica id scored by its last heartbeat, in Redis's clock (TIME)
    cg:ack:{revocation}    list of the replicas that closed the revoked agent's connections
    cg:revocations         pub/sub channel of Revocation JSON

Each script is one round trip and atomic: a session's timeouts are decided by the caller's clock inside it, and a
revocation deletes the sessions and broadcasts in the same step, so no replica can read a session between the two.
Replica clocks may disagree, so whatever sets a session's TTL also makes its agent's index live at least as long
(a session created by a replica whose clock runs ahead is given a longer TTL than its index had), and liveness is
timed by Redis's own clock.
"""

from __future__ import annotations

import json

from gateway.sessions.base import session_key

SESSION_PREFIX = "cg:s:"
AGENT_PREFIX = "cg:a:"
#: + the SHA-256 of ``[iss, sid]``: an IdP session's index (``idp_session_index``).
IDP_SESSION_PREFIX = "cg:i:"
LOGIN_PREFIX = "cg:l:"
#: The pending logins by expiry (PUT_PENDING_LOGIN_SCRIPT keeps it to the cap).
LOGINS_KEY = "cg:logins"
ONCE_PREFIX = "cg:o:"
ACK_PREFIX = "cg:ack:"
REPLICAS_KEY = "cg:replicas"
#: A replica's clock offset from Redis's, as it last measured it (gateway/sessions/redis_clock.py).
CLOCK_PREFIX = "cg:clock:"
REVOCATION_CHANNEL = "cg:revocations"
ACK_TTL_SECONDS = 300
#: What a single-use key holds once its effect committed (a holder is a uuid4 hex, never this).
ONCE_USED = "used"


def idp_session_index(issuer: str, idp_session_id: str) -> str:
    """The key of an IdP session's index. Hashed: ``sid`` is the provider's string, of any length and content; the
    JSON array (ASCII, escaped) keeps ("a:b", "c") and ("a", "b:c") apart."""
    return IDP_SESSION_PREFIX + session_key(json.dumps([issuer, idp_session_id]))


#: + the broadcasting replica's id: the list its acknowledgements come back on (gateway/sessions/redis_acks.py).
ACKS_TO_PREFIX = "cg:acks:"

# KEYS: the broadcasting replica's acknowledgement list, the revocation's own list (where replicas of earlier
# releases wait: keep it while one can be running). ARGV: "<revocation id> <replica id>", TTL s, replica id. One script
# so that the acknowledgements of one event-loop turn share a round trip (gateway/sessions/redis_batches.py): in a
# storm each replica acknowledges a hundred broadcasts at once.
ACK_SCRIPT = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: session, agent index, and its IdP session's index when it has a sid. ARGV: data, agent, now, ttl ms,
# index ttl s, member, session prefix, agent prefix, sessions per IdP session at most. Checks a few random index
# members and drops the ended ones: O(1) per login, and the index stays near its live size (an agent who logs in
# daily would otherwise keep every expired key until the index's TTL). An IdP session's index is scored in
# creation order (one more than its newest, whatever the replicas' clocks), so past the cap the oldest sessions
# are ended, never the new one; returns their member, agent pairs, whose end the caller broadcasts.
CREATE_SCRIPT = """
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'agent', ARGV[2], 'created', ARGV[3], 'seen', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
for _, member in ipairs(redis.call('SRANDMEMBER', KEYS[2], 8)) do
  if redis.call('EXISTS', ARGV[7] .. member) == 0 then redis.call('SREM', KEYS[2], member) end
end
redis.call('SADD', KEYS[2], ARGV[6])
if redis.call('PTTL', KEYS[2]) < ARGV[5] * 1000 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
local ended = {}
if KEYS[3] then
  redis.call('HSET', KEYS[1], 'idp', KEYS[3])
  for _, member in ipairs(redis.call('ZRANDMEMBER', KEYS[3], 8)) do
    if redis.call('EXISTS', ARGV[7] .. member) == 0 then redis.call('ZREM', KEYS[3], member) end
  end
  local newest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
  redis.call('ZADD', KEYS[3], newest[2] and tonumber(newest[2]) + 1 or 1, ARGV[6])
  local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[9])
  if excess > 0 then
    local oldest = redis.call('ZPOPMIN', KEYS[3], excess)
    for i = 1, #oldest, 2 do
      local agent = redis.call('HGET', ARGV[7] .. oldest[i], 'agent')
      if agent then
        redis.call('DEL', ARGV[7] .. oldest[i])
        redis.call('SREM', ARGV[8] .. agent, oldest[i])
        table.insert(ended, oldest[i])
        table.insert(ended, agent)
      end
    end
  end
  if redis.call('PTTL', KEYS[3]) < ARGV[5] * 1000 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
end
return ended
"""

# KEYS: session. ARGV: now, idle s, absolute s, grace s, agent prefix, member, touch s. The absolute limit wins. A
# lookup within ``touch`` seconds of ``seen`` (either way: another replica's clock may run a little ahead) writes
# nothing: the idle clock then runs from up to ``touch`` seconds before the latest request (a session may idle out
# that much early, never late), and a busy session costs Redis — and its replicas and AOF, which a script's writes
# reach — a write a second, not one a request. Otherwise ``seen`` moves, and the indexes (the agent's, the IdP
# session's) are given the session's TTL when their own is shorter (put back if they expired: a live session is
# always in them); the TTLs set at the last touch outlast ``touch`` by the grace.
LOOKUP_SCRIPT = """
local f = redis.call('HMGET', KEYS[1], 'data', 'agent', 'created', 'seen', 'idp')
if not f[1] then return {'missing'} end
local now, idle, absolute = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local created, seen = tonumber(f[3]), tonumber(f[4])
local state = 'valid'
if now - created >= absolute then state = 'absolute_expired' elseif now - seen >= idle then state = 'idle_expired' end
if state ~= 'valid' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', ARGV[5] .. f[2], ARGV[6])
  if f[5] then redis.call('ZREM', f[5], ARGV[6]) end
  return {state, f[1], f[3], f[4]}
end
if math.abs(now - seen) < tonumber(ARGV[7]) then return {state, f[1], f[3], f[4]} end
if now > seen then redis.call('HSET', KEYS[1], 'seen', ARGV[1]); f[4] = ARGV[1] end
local ttl = math.ceil((math.min(idle, absolute - (now - created)) + tonumber(ARGV[4])) * 1000)
redis.call('PEXPIRE', KEYS[1], ttl)
local index = ARGV[5] .. f[2]
local index_ttl = redis.call('PTTL', index)
if index_ttl == -2 then redis.call('SADD', index, ARGV[6]) end
if index_ttl ~= -1 and index_ttl < ttl then redis.call('PEXPIRE', index, ttl) end
if f[5] then
  local idp_ttl = redis.call('PTTL', f[5])
  if idp_ttl == -2 then redis.call('ZADD', f[5], 1, ARGV[6]) end
  if idp_ttl ~= -1 and idp_ttl < ttl then redis.call('PEXPIRE', f[5], ttl) end
end
return {state, f[1], f[3], f[4]}
"""

# KEYS: session. ARGV: agent prefix, member.
DELETE_SCRIPT = """
local f = redis.call('HMGET', KEYS[1], 'data', 'agent', 'idp')
if not f[1] then return false end
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[1] .. f[2], ARGV[2])
if f[3] then redis.call('ZREM', f[3], ARGV[2]) end
return f[1]
"""

# KEYS: agent index. ARGV: session prefix, channel, revocation JSON, and 'if-any' to broadcast only when a session
# ended. Deletes and broadcasts atomically.
REVOKE_SCRIPT = """
local count = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local idp = redis.call('HGET', ARGV[1] .. member, 'idp')
  if idp then redis.call('ZREM', idp, member) end
  count = count + redis.call('DEL', ARGV[1] .. member)
end
redis.call('DEL', KEYS[1])
if count > 0 or ARGV[4] ~= 'if-any' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return count
"""

# KEYS: agent index. ARGV: session prefix, channel, revocation JSON, IdP session id. Deletes the agent's sessions
# whose data names that ``sid`` (back-channel logout) and broadcasts only if one ended, atomically. cjson only
# reads here, so its re-encoding quirks (see UPDATE_GROUPS_SCRIPT) cannot touch the stored data.
REVOKE_IDP_SESSION_SCRIPT = """
local count = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local f = redis.call('HMGET', ARGV[1] .. member, 'data', 'idp')
  if not f[1] then
    redis.call('SREM', KEYS[1], member)
  elseif cjson.decode(f[1])['idp_session_id'] == ARGV[4] then
    redis.call('DEL', ARGV[1] .. member)
    redis.call('SREM', KEYS[1], member)
    if f[2] then redis.call('ZREM', f[2], member) end
    count = count + 1
  end
end
if count > 0 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return count
"""

# KEYS: agent index. ARGV: session prefix, groups (JSON array). Splices the array into each session's data
# in place of the old one; every other byte, the timestamps and the TTL stay. Text, not cjson: cjson would
# turn an empty array into {} and round floats to 14 digits. The key is found as ',"groups":[', which cannot
# occur inside a JSON string (a quote there is always escaped); the old array ends at the first ']' outside
# a string. Ended sessions are pruned from the index, never written (HSET would recreate them).
UPDATE_GROUPS_SCRIPT = """
local count = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local data = redis.call('HGET', ARGV[1] .. member, 'data')
  if not data then
    redis.call('SREM', KEYS[1], member)
  else
    local _, open = string.find(data, ',"groups":[', 1, true)
    local i, quoted = open and open + 1, false
    while i and i <= #data do
      local c = string.sub(data, i, i)
      if quoted then
        if c == '\\\\' then i = i + 1 elseif c == '"' then quoted = false end
      elseif c == '"' then quoted = true
      elseif c == ']' then
        data = string.sub(data, 1, open - 1) .. ARGV[2] .. string.sub(data, i + 1)
        redis.call('HSET', ARGV[1] .. member, 'data', data)
        count = count + 1
        break
      end
      i = i + 1
    end
  end
end
return count
"""

# KEYS: agent index. ARGV: session prefix, now, idle s, absolute s. Returns member, data, created, seen, ...
SESSIONS_OF_SCRIPT = """
local out = {}
local now, idle, absolute = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local f = redis.call('HMGET', ARGV[1] .. member, 'data', 'created', 'seen')
  if not f[1] then
    redis.call('SREM', KEYS[1], member)
  elseif now - tonumber(f[2]) < absolute and now - tonumber(f[3]) < idle then
    table.insert(out, member); table.insert(out, f[1]); table.insert(out, f[2]); table.insert(out, f[3])
  end
end
return out
"""

# KEYS: an IdP session's index. ARGV: session prefix, now, idle s, absolute s. As SESSIONS_OF_SCRIPT: member, data,
# created, seen, ... of its live sessions; members whose session is gone are dropped.
IDP_SESSIONS_SCRIPT = """
local out = {}
local now, idle, absolute = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', ARGV[1] .. member, 'data', 'created', 'seen')
  if not f[1] then
    redis.call('ZREM', KEYS[1], member)
  elseif now - tonumber(f[2]) < absolute and now - tonumber(f[3]) < idle then
    table.insert(out, member); table.insert(out, f[1]); table.insert(out, f[2]); table.insert(out, f[3])
  end
end
return out
"""

# KEYS: the replicas' sorted set. ARGV: replica id, liveness s. Scored with Redis's clock, as LIVE_REPLICAS_SCRIPT
# reads it: a replica whose own clock is behind is still counted live. Scores older than ten liveness periods go.
HEARTBEAT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * tonumber(ARGV[2]))
return 1
"""

# KEYS: the pending login's key, the pending logins' index (sorted by expiry). ARGV: the login's JSON, its TTL s,
# the cap. As the embedded store: at most the cap live at once, the oldest dropped first, so a /login flood cannot
# fill the Redis that also holds every session (each pending login is ~2.7 KB for its 600 s).
PUT_PENDING_LOGIN_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3]) + 1
if excess > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #oldest, 2 do redis.call('DEL', oldest[i]) end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), KEYS[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: the live replicas (scored by their heartbeats). ARGV: this replica's id, its offset from Redis's clock (s),
# how long the offset is kept (ms), the liveness window (s), the clock-offset key prefix. Publishes this replica's
# offset and returns the other live replicas' (gateway/sessions/redis_clock.py). An empty id (the CLI, no replica)
# publishes nothing and returns every live replica's.
CLOCKS_SCRIPT = """
if ARGV[1] ~= '' then redis.call('SET', ARGV[5] .. ARGV[1], ARGV[2], 'PX', ARGV[3]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local offsets = {}
for _, replica in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[4]), '+inf')) do
  if replica ~= ARGV[1] then
    local offset = redis.call('GET', ARGV[5] .. replica)
    if offset then offsets[#offsets + 1] = offset end
  end
end
return offsets
"""

LIVE_REPLICAS_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""

# KEYS: the single-use key. ARGV: this claim's holder, hold ms. Returns what the key holds after: the holder when
# this call claimed it, ONCE_USED, or another request's holder.
CLAIM_ONCE_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return redis.call('GET', KEYS[1])
"""

# KEYS: the single-use key. ARGV: the holder releasing it. Deletes it only while that holder still holds it.
RELEASE_ONCE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
