-- wrk script for the load benchmark: rotates over every account x URL pair, checks which
-- client certificate the partner saw, and prints one machine-readable RESULT line.
--
-- Environment:
--   BENCH_FORM      absolute (HTTP proxy form: GET http://localhost:8443/... with Host) or
--                   origin (GET /acctN/uM, for the direct run against the partner)
--   BENCH_ACCOUNTS  number of accounts (acct0..)
--   BENCH_URLS      URLs per account (/acctN/u0..)
--   BENCH_CLOSE     1: send "Connection: close" (a new downstream connection per request)
--   BENCH_PARTNER   the partner's authority in absolute-form requests (localhost:8443)
--
-- The partner answers "<client subject DN> <path>": a response whose certificate CN names
-- another account than its path is counted as a wrong identity.

local form = os.getenv("BENCH_FORM") or "absolute"
local accounts = tonumber(os.getenv("BENCH_ACCOUNTS") or "10")
local urls = tonumber(os.getenv("BENCH_URLS") or "100")
local close = os.getenv("BENCH_CLOSE") == "1"
local partner = os.getenv("BENCH_PARTNER") or "localhost:8443"

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   reqs = {}
   for u = 0, urls - 1 do
      -- Accounts interleaved: consecutive requests on one connection use different identities.
      for a = 0, accounts - 1 do
         local path = string.format("/acct%d/u%d", a, u)
         local headers = { ["x-mtls-account"] = "acct" .. a, ["x-mtls-service"] = "BENCH" }
         if close then
            headers["Connection"] = "close"
         end
         if form == "absolute" then
            headers["Host"] = partner
            path = "http://" .. partner .. path
         end
         reqs[#reqs + 1] = wrk.format("GET", path, headers)
      end
   end
   counter = (id * 7919) % #reqs
   checked = 0
   wrong = 0
end

function request()
   counter = counter % #reqs + 1
   return reqs[counter]
end

function response(status, headers, body)
   if status ~= 200 or body == nil then
      return
   end
   local cn = body:match("CN=client%-(acct%d+)")
   if cn then
      checked = checked + 1
      if cn ~= body:match("/(acct%d+)/") then
         wrong = wrong + 1
      end
   end
end

function done(summary, latency, requests)
   local checked_total, wrong_total = 0, 0
   for _, t in ipairs(threads) do
      checked_total = checked_total + (t:get("checked") or 0)
      wrong_total = wrong_total + (t:get("wrong") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d connect=%d read=%d " ..
      "write=%d timeout=%d checked=%d wrong_identity=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.status, e.connect, e.read, e.write, e.timeout, checked_total, wrong_total))
end
