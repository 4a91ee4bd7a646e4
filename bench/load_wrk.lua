-- wrk script of the load test (bench/load_wrk.py runs it): every request is one agent's, in turn.
--
-- wrk -s bench/load_wrk.lua URL -- AGENTS_FILE LOG_DIR NAME TAG
--   AGENTS_FILE  one "agent cookie" pair a line; each thread starts at its own place in the list
--   LOG_DIR      where each thread writes "agent seq sent_us" per request sent ("-": no log)
--   NAME         this wrk process's name, part of each request's unique seq
--   TAG          "1": add ?a=AGENT&s=SEQ&t=SENT_US (the upstream logs what it serves); "0": plain paths
-- CG_WRK_DELAY_MS (environment): mean pause of a connection between two requests, uniform in [0, 2 × mean]
-- (an agent's think time); unset or 0: closed loop, as fast as the server answers.
--
-- The send time is CLOCK_MONOTONIC in microseconds (LuaJIT FFI), the clock of Python's time.monotonic(), so the
-- checks can compare it with the moment a deprovisioning call returned. Statuses are counted per thread and
-- printed at the end as "cg-status CODE COUNT" lines.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } cg_timespec;
int clock_gettime(int clk_id, cg_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("cg_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local threads = {}

function setup(thread)
  thread:set("thread_number", #threads)
  table.insert(threads, thread)
end

local paths = { "/chat/", "/phone/", "/mail/" }
local agents, cookies = {}, {}
local log, tag, name = nil, false, "wrk"
local position, seq = 0, 0
counts = {}

function init(args)
  for line in io.lines(args[1]) do
    local agent, cookie = line:match("^(%S+) (%S+)$")
    agents[#agents + 1] = agent
    cookies[#cookies + 1] = "channelgate=" .. cookie
  end
  name = args[3] .. "-" .. thread_number
  if args[2] ~= "-" then
    log = io.open(args[2] .. "/sent-" .. name .. ".log", "w")
    log:setvbuf("line")
  end
  tag = args[4] == "1"
  -- Each thread of each wrk process starts at its own place in the list.
  local offset = 0
  for i = 1, #name do
    offset = (offset * 31 + name:byte(i)) % 1000003
  end
  position = (offset + thread_number * 7919) % #agents
  math.randomseed(now_us() % 2147483647 + thread_number)
end

local mean_delay = tonumber(os.getenv("CG_WRK_DELAY_MS") or "0")
if mean_delay > 0 then
  function delay()
    return math.random(0, 2 * mean_delay)
  end
end

local primed = false

function request()
  if not primed then
    -- wrk calls request() once per thread before it connects and never sends that one: not a request.
    primed = true
    return wrk.format("GET", paths[1])
  end
  position = position % #agents + 1
  seq = seq + 1
  local path = paths[math.random(3)]
  if tag then
    local sent = now_us()
    local id = name .. "-" .. seq
    path = path .. "?a=" .. agents[position] .. "&s=" .. id .. "&t=" .. sent
    if log then
      log:write(agents[position], " ", id, " ", sent, "\n")
    end
  end
  return wrk.format("GET", path, { ["Cookie"] = cookies[position] })
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local each = thread:get("counts")
    for status, count in pairs(each) do
      total[status] = (total[status] or 0) + count
    end
  end
  for status, count in pairs(total) do
    io.write("cg-status ", status, " ", count, "\n")
  end
end
