-- wrk script of conformance/bench/wechat_bench.py: MP safe-mode callback
-- POSTs, each from a pre-generated pool of distinct messages (distinct
-- MsgIds, so the gateway's dedupe never short-circuits), with its own
-- msg_signature over its own Encrypt.
--   WX_POOL        the pool file: one "<msg_signature> <Encrypt>" a line
--   WX_POOL_START  the first line to use (0-based), WX_POOL_COUNT how many
--   WX_PATH        the callback path
local sigs, encs = {}, {}
local n, i = 0, 0
local prefix, head, tail, fixed, req_mid

init = function(args)
  local f = assert(io.open(os.getenv("WX_POOL"), "r"))
  local start = tonumber(os.getenv("WX_POOL_START") or "0")
  local count = tonumber(os.getenv("WX_POOL_COUNT") or "1e12")
  local k = 0
  for line in f:lines() do
    if k >= start and n < count then
      local s, e = line:match("^(%x+) (%S+)$")
      n = n + 1
      sigs[n], encs[n] = s, e
    end
    k = k + 1
  end
  f:close()
  prefix = os.getenv("WX_PATH") ..
           "?signature=0&timestamp=1700000000&nonce=584930&openid=oBench&encrypt_type=aes" ..
           "&msg_signature="
  head = "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><Encrypt><![CDATA["
  tail = "]]></Encrypt></xml>"
  fixed = #head + #tail
  req_mid = " HTTP/1.1\r\nHost: " .. wrk.host .. ":" .. wrk.port ..
            "\r\nContent-Type: text/xml\r\nContent-Length: "
end

-- The raw request built by hand: one concatenation, cheaper than wrk.format
-- (the load generator has one core too).
request = function()
  i = i % n + 1
  local e = encs[i]
  return "POST " .. prefix .. sigs[i] .. req_mid .. (#e + fixed) .. "\r\n\r\n" .. head .. e .. tail
end

-- runs in wrk's main Lua state, where init did not run: the count from the env
done = function(summary, latency, requests)
  local count = tonumber(os.getenv("WX_POOL_COUNT"))
  io.write(string.format("pool: %d requests over %d distinct messages%s\n",
                         summary.requests, count,
                         summary.requests > count and " (WRAPPED: duplicates)" or ""))
end
