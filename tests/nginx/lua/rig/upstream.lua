-- The real upstream: records every request it receives (count, method, URI, header lines
-- in arrival order) in the `upstream` shared dict. The control endpoints (same server,
-- under /__rig/) let a test read the records and the bridge's RPC counter.
local cjson = require "cjson.safe"

local M = {}

local function header_lines()
  local lines = {}
  local raw = ngx.req.raw_header(true) -- without the request line
  for line in raw:gmatch("[^\r\n]+") do
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then
      lines[#lines + 1] = { name, value }
    end
  end
  return lines
end

function M.record()
  local dict = ngx.shared.upstream
  local n = dict:incr("count", 1, 0)
  dict:set("request:" .. n, cjson.encode({
    method = ngx.req.get_method(),
    uri = ngx.var.request_uri,
    headers = header_lines(),
  }))
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode({ upstream = "rig", seen = n }))
end

local function send_json(value)
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(value))
end

function M.control()
  local what = ngx.var.uri:match("^/__rig/(.*)$")
  local dict = ngx.shared.upstream
  if what == "requests" then
    local count = dict:get("count") or 0
    local since = tonumber(ngx.var.arg_since) or 0
    local records = {}
    for i = since + 1, count do
      records[#records + 1] = cjson.decode(dict:get("request:" .. i) or "null")
    end
    local out = { count = count, requests = records }
    if #records == 0 then
      out.requests = cjson.empty_array
    end
    return send_json(out)
  elseif what == "counters" then
    local rig = ngx.shared.rig
    local by_method = {}
    for _, key in ipairs(rig:get_keys(0)) do
      if key:sub(1, 4) == "rpc:" then
        by_method[key:sub(5)] = rig:get(key)
      end
    end
    return send_json({
      rpc = rig:get("rpc") or 0,
      start_instance = by_method["plugin.StartInstance"] or 0,
      handle_event = by_method["plugin.HandleEvent"] or 0,
      by_method = next(by_method) and by_method or cjson.empty_object,
      upstream = dict:get("count") or 0,
    })
  elseif what:sub(1, 10) == "serialize/" then
    local value = ngx.shared.rig:get("serialize:" .. what:sub(11))
    return send_json(value and cjson.decode(value) or cjson.null)
  end
  ngx.status = 404
  return send_json({ message = "unknown control endpoint" })
end

return M
