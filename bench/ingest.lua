-- wrk script for bench/ingest.py: POST Evolution webhooks, each with a unique data.key.id.
--
-- Told by the environment (bench/ingest.py sets it):
--   BENCH_BODY_FILE  the body, with @@ID@@ where data.key.id goes
--   BENCH_PREFIX     this run's id prefix; a thread appends "<thread>-<counter>"
--   BENCH_DUP_ID     an id already stored: sent after the deadline (see below)
--   BENCH_DEADLINE   Unix time (s) after which no new id is sent
--   BENCH_TOKEN      the webhook bearer token
--   BENCH_OUT        where done() writes its counts and the acknowledged positions
--
-- wrk cuts its connections when -d runs out, with one request in flight on each. A cut
-- request with a new id may still be committed by the service without its 200 reaching
-- us, so "rows stored == 2xx" could not hold. bench/ingest.py therefore runs wrk a little
-- past BENCH_DEADLINE, and after the deadline every request re-sends BENCH_DUP_ID: the
-- same endpoint and work, but it stores no row, so the cut requests store nothing.

local ffi = require("ffi")
pcall(ffi.cdef, [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock_id, bench_timespec *tp);
]])
local timespec = ffi.new("bench_timespec")

local function now()
  ffi.C.clock_gettime(0, timespec) -- CLOCK_REALTIME, comparable with Python's time.time()
  return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

-- Main state: one entry per thread, read back in done().
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

-- Thread state.
local head, tail, prefix, dup_body, deadline, headers
local path = "/webhooks/evolution"

function init(args)
  local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
  local template = file:read("*a")
  file:close()
  head, tail = template:match("^(.-)@@ID@@(.*)$")
  assert(head, "BENCH_BODY_FILE has no @@ID@@")
  prefix = os.getenv("BENCH_PREFIX") .. tid .. "-"
  dup_body = head .. os.getenv("BENCH_DUP_ID") .. tail
  deadline = tonumber(os.getenv("BENCH_DEADLINE"))
  headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN"),
  }
  first_sent = 0 -- time of this thread's first request
  sent_new = 0 -- requests with a new id
  sent_dup = 0 -- requests after the deadline
  acked_new = 0 -- 2xx with "duplicate": false
  acked_dup = 0 -- 2xx with "duplicate": true
  odd_2xx = 0 -- 2xx whose body we could not read
  non_2xx = 0
  statuses = {} -- non-2xx status -> count
  positions = {} -- positions of the acked_new answers
end

function request()
  local t = now()
  if first_sent == 0 then
    first_sent = t
  end
  if t < deadline then
    sent_new = sent_new + 1
    return wrk.format("POST", path, headers, head .. prefix .. sent_new .. tail)
  end
  sent_dup = sent_dup + 1
  return wrk.format("POST", path, headers, dup_body)
end

function response(status, _, body)
  if status >= 200 and status < 300 then
    local position, duplicate = body:match('"position":%s*(%d+),%s*"duplicate":%s*(%a+)')
    if duplicate == "false" then
      acked_new = acked_new + 1
      positions[acked_new] = position
    elseif duplicate == "true" then
      acked_dup = acked_dup + 1
    else
      odd_2xx = odd_2xx + 1
    end
  else
    non_2xx = non_2xx + 1
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
  end
end

function done(summary, latency, _)
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  local totals = {
    sent_new = 0, sent_dup = 0, acked_new = 0, acked_dup = 0, odd_2xx = 0, non_2xx = 0,
  }
  local first = nil
  for _, thread in ipairs(threads) do
    for name in pairs(totals) do
      totals[name] = totals[name] + (thread:get(name) or 0)
    end
    if thread:get("tid") == 1 then
      -- wrk calls request() once in thread 1's state to check the request it makes
      -- (script_verify_request) and never sends that one.
      totals.sent_new = totals.sent_new - 1
    end
    local started = thread:get("first_sent") or 0
    if started > 0 and (first == nil or started < first) then
      first = started
    end
    for status, count in pairs(thread:get("statuses") or {}) do
      out:write(string.format("status_%s %d\n", status, count))
    end
    for _, position in ipairs(thread:get("positions") or {}) do
      out:write("position ", position, "\n")
    end
  end
  for name, value in pairs(totals) do
    out:write(string.format("%s %d\n", name, value))
  end
  out:write(string.format("first_sent %.6f\n", first or 0))
  out:write(string.format("requests %d\n", summary.requests))
  out:write(string.format("duration_us %d\n", summary.duration))
  for name, value in pairs(summary.errors) do
    out:write(string.format("socket_%s %d\n", name, value))
  end
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    out:write(string.format("latency_p%s_us %d\n", p, latency:percentile(p)))
  end
  out:write(string.format("latency_mean_us %.1f\n", latency.mean))
  out:write(string.format("latency_max_us %d\n", latency.max))
  out:close()
end
