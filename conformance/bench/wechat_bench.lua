-- wrk script of conformance/bench/wechat_bench.py: MP safe-mode callback
-- POSTs, each from a pre-generated pool of distinct messages (distinct
-- MsgIds, so the gateway's dedupe never short-circuits), with its own
-- msg_signature over its own Encrypt.
--   WX_POOL        the pool file: one "<msg_signature> <Encrypt>" a line
--   WX_POOL_START  the first line to use (0-based), WX_POOL_COUNT how many
--   WX_PATH        the callback path
local sigs, encs = {}, {}
local n, i = 0, 0
local prefix, head, tail
local headers = { ["Content-Type"] = "text/xml" }

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
end

request = function()
  i = i % n + 1
  return wrk.format("POST", prefix .. sigs[i], headers, head .. encs[i] .. tail)
end

-- runs in wrk's main Lua state, where init did not run: the count from the env
done = function(summary, latency, requests)
  local count = tonumber(os.getenv("WX_POOL_COUNT"))
  io.write(string.format("pool: %d requests over %d distinct messages%s\n",
                         summary.requests, count,
                         summary.requests > count and " (WRAPPED: duplicates)" or ""))
end
