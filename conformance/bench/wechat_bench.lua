-- wrk script of conformance/bench/wechat_bench.py: MP safe-mode callback
-- POSTs, each from a pre-generated pool of distinct messages (distinct
-- MsgIds, so the gateway's dedupe never short-circuits), with its own
-- msg_signature over its own Encrypt.
--   WX_POOL        the pool file: one "<msg_signature> <Encrypt>" a line
--   WX_POOL_START  the first line to use (0-based), WX_POOL_COUNT how many
--   WX_PATH        the callback path
local reqs = {}
local n, i = 0, 0

-- Every request is built whole here, once: request() then returns a string
-- that already exists. Built per call (a 900-byte concatenation), the
-- garbage made LuaJIT collect over the whole pool every few thousand
-- requests; those pauses stalled wrk's only thread for tens of ms and put
-- wrk's own hiccups into the p99 it reported (70 ms against a bare evhttp
-- server with a 400k pool, 6 ms with a 20k pool), and capped wrk itself
-- near 28k requests/s.
init = function(args)
  local f = assert(io.open(os.getenv("WX_POOL"), "r"))
  local start = tonumber(os.getenv("WX_POOL_START") or "0")
  local count = tonumber(os.getenv("WX_POOL_COUNT") or "1e12")
  local prefix = "POST " .. os.getenv("WX_PATH") ..
                 "?signature=0&timestamp=1700000000&nonce=584930&openid=oBench&encrypt_type=aes" ..
                 "&msg_signature="
  local head = "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><Encrypt><![CDATA["
  local tail = "]]></Encrypt></xml>"
  local mid = " HTTP/1.1\r\nHost: " .. wrk.host .. ":" .. wrk.port ..
              "\r\nContent-Type: text/xml\r\nContent-Length: "
  local k = 0
  for line in f:lines() do
    if k >= start and n < count then
      local s, e = line:match("^(%x+) (%S+)$")
      n = n + 1
      reqs[n] = prefix .. s .. mid .. (#e + #head + #tail) .. "\r\n\r\n" .. head .. e .. tail
    end
    k = k + 1
  end
  f:close()
  collectgarbage("collect")
end

request = function()
  i = i % n + 1
  return reqs[i]
end

-- runs in wrk's main Lua state, where init did not run: the count from the env
done = function(summary, latency, requests)
  local count = tonumber(os.getenv("WX_POOL_COUNT"))
  io.write(string.format("pool: %d requests over %d distinct messages%s\n",
                         summary.requests, count,
                         summary.requests > count and " (WRAPPED: duplicates)" or ""))
end
