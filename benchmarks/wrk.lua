-- wrk script for benchmarks/run.py: rotate through prepared requests, report JSON.
-- wrk -s wrk.lua URL -- FILE METHOD CLOSE [count]
--   FILE: one request a line, hex: the DER body (POST) or the path (GET)
--   METHOD: POST or GET; CLOSE: "close" sends Connection: close (new connection each)
--   count: also count answers that are not successful OCSP responses (tryLater, ...):
--   an OCSPResponse without a responseBytes is under 16 bytes. Off unless asked: a
--   response callback makes wrk read every body, which costs it CPU.
local requests = {}
local n = 0
local i = 0
local threads = {}
unsuccessful = 0

setup = function(thread)
  table.insert(threads, thread)
end

local function unhex(s)
  return (s:gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

init = function(args)
  local headers = {}
  if args[3] == "close" then headers["Connection"] = "close" end
  if args[2] == "POST" then headers["Content-Type"] = "application/ocsp-request" end
  for line in io.lines(args[1]) do
    local data = unhex(line)
    if args[2] == "POST" then
      requests[#requests + 1] = wrk.format("POST", "/", headers, data)
    else
      requests[#requests + 1] = wrk.format("GET", data, headers, nil)
    end
  end
  n = #requests
  if args[4] == "count" then
    response = function(status, headers, body)
      if body == nil or #body < 16 then unsuccessful = unsuccessful + 1 end
    end
  end
end

request = function()
  i = i % n + 1
  return requests[i]
end

done = function(summary, latency, _)
  local e = summary.errors
  local bad = 0
  for _, thread in ipairs(threads) do bad = bad + (thread:get("unsuccessful") or 0) end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
      .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, '
      .. '"unsuccessful": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout, bad))
end
