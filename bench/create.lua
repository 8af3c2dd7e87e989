-- wrk script: creates only, each with a fresh out_trade_no.
--   wrk -t2 -c64 -d20s -s bench/create.lua http://127.0.0.1:8080
local counter = 0
local run = tostring(os.time())

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  n = 0
end

function request()
  n = n + 1
  local body = string.format(
    '{"merchant_id":"m-wrk","out_trade_no":"wrk-%s-%d-%d","user_id":"u-%d","amount":1999,"currency":"CNY"}',
    run, tid, n, n % 10000)
  return wrk.format("POST", "/v1/orders", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status ~= 201 then
    errors = (errors or 0) + 1
  end
end
