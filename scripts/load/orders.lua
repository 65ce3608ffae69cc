-- wrk script: place orders as one customer for one active product.
-- USER_TOKEN (the customer's bearer token) and PRODUCT_ID come from the
-- environment (scripts/load-orders sets them).
local token = os.getenv("USER_TOKEN")
local product = os.getenv("PRODUCT_ID")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.body = '{"items":[{"product_id":"' .. product .. '","quantity":2},{"product_id":"' .. product ..
  '","variant":"Blue","quantity":1}],"shipping_address":{"recipient_name":"Zoe","street":"Torstrasse 1",' ..
  '"city":"Berlin","zip_code":"10119","country":"DE"}}'

local codes = {}
function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end

function done(summary, latency, requests)
  io.write(string.format("requests/s %.0f  p50 %.2f ms  p99 %.2f ms  errors %d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.errors.status + summary.errors.connect + summary.errors.timeout))
end
