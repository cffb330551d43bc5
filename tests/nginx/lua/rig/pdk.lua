-- The `kong` global of the rig: the subset of Kong's PDK the project's plugins use, with
-- Kong 3.9's semantics (argument checks that raise, nil for "absent", delayed responses in
-- the access phase). Per-request state lives in ngx.ctx, as in Kong.
local cjson = require "cjson.safe"

local MAX_HEADERS_DEFAULT = 100 -- Kong's default lua_max_req_headers
local MIN_HEADERS, MAX_HEADERS = 1, 1000

local DEFAULT_MESSAGES = {
  [400] = "Bad request",
  [401] = "Unauthorized",
  [403] = "Forbidden",
  [404] = "Not found",
  [500] = "An unexpected error occurred",
  [502] = "An invalid response was received from the upstream server",
  [503] = "Service unavailable",
}

local M = {}

-- $request_id is not indexed in this nginx.conf, so nginx would make a new one on every
-- read: keep the first, as Kong's indexed $kong_request_id does.
local function request_id()
  local ctx = ngx.ctx
  ctx.request_id = ctx.request_id or ngx.var.request_id
  return ctx.request_id
end

local function send(status, body, headers)
  ngx.status = status
  if headers then
    for name, value in pairs(headers) do
      ngx.header[name] = value
    end
  end
  ngx.header["X-Kong-Request-Id"] = request_id()
  if type(body) == "table" then
    ngx.header["Content-Type"] = "application/json; charset=utf-8"
    body = cjson.encode(body)
  end
  if body ~= nil then
    ngx.header["Content-Length"] = #body
    ngx.print(body)
  end
  return ngx.exit(status)
end

-- Kong's flush callback for a delayed response set by exit()
local function flush(ctx)
  local dr = ctx.delayed_response
  return send(dr.status_code, dr.content, dr.headers)
end

local function check_headers_table(headers)
  for name, value in pairs(headers) do
    if type(name) ~= "string" then
      error("invalid header name \"" .. tostring(name) .. "\": got " .. type(name)
            .. ", expected string", 3)
    end
    local vtype = type(value)
    if vtype == "table" then
      for _, item in ipairs(value) do
        if type(item) ~= "string" then
          error("invalid header value in array \"" .. name .. "\": got " .. type(item)
                .. ", expected string", 3)
        end
      end
    elseif vtype ~= "string" and vtype ~= "number" and vtype ~= "boolean" then
      error("invalid header value for \"" .. name .. "\": got " .. vtype
            .. ", expected array of string, string, number or boolean", 3)
    end
  end
end

local function exit(status, body, headers)
  if type(status) ~= "number" or status < 100 or status > 599 then
    error("code must be a number between 100 and 599", 2)
  end
  if body ~= nil and type(body) ~= "string" and type(body) ~= "table" then
    error("body must be a nil, string or table", 2)
  end
  if headers ~= nil and type(headers) ~= "table" then
    error("headers must be a nil or table", 2)
  end
  local ctx = ngx.ctx
  ctx.KONG_EXITED = true
  if ctx.delay_response and not ctx.delayed_response then
    ctx.delayed_response = { status_code = status, content = body, headers = headers }
    ctx.delayed_response_callback = flush
    coroutine.yield()
    return
  end
  return send(status, body, headers)
end

local function error_response(status, message, headers)
  if type(status) ~= "number" or status < 400 or status > 599 then
    error("code must be a number between 400 and 599", 2)
  end
  if message == nil then
    message = DEFAULT_MESSAGES[status] or "The upstream server responded with " .. status
  end
  return exit(status, { message = message, request_id = request_id() }, headers)
end

local function set_path(tbl, key, value)
  local node = tbl
  local parts = {}
  for part in key:gmatch("[^.]+") do
    parts[#parts + 1] = part
  end
  for i = 1, #parts - 1 do
    node[parts[i]] = node[parts[i]] or {}
    node = node[parts[i]]
  end
  node[parts[#parts]] = value
end

local function namespaced(level)
  return function(...)
    local name = ngx.ctx.plugin_name or "core"
    ngx.log(level, "[kong] [", name, "] ", ...)
  end
end

--- Builds the `kong` table. `rig` carries the consumer table of the loaded configuration.
function M.new(rig)
  local kong = {
    client = {},
    request = {},
    service = { request = {} },
    response = {},
    log = {},
    plugin = {},
    router = {},
    nginx = {},
    ctx = {},
  }

  -- kong.ctx.shared: one table per request; kong.ctx.plugin: per request and plugin
  setmetatable(kong.ctx, {
    __index = function(_, key)
      local ctx = ngx.ctx
      if key == "shared" then
        ctx.shared = ctx.shared or {}
        return ctx.shared
      elseif key == "plugin" then
        ctx.plugin_ctx = ctx.plugin_ctx or {}
        local id = ctx.plugin_id or "core"
        ctx.plugin_ctx[id] = ctx.plugin_ctx[id] or {}
        return ctx.plugin_ctx[id]
      end
    end,
  })

  -- kong.client --------------------------------------------------------------------------
  function kong.client.get_ip()
    return ngx.var.realip_remote_addr
  end

  function kong.client.get_forwarded_ip()
    return ngx.var.remote_addr
  end

  function kong.client.get_port()
    return tonumber(ngx.var.realip_remote_port)
  end

  function kong.client.get_forwarded_port()
    return tonumber(ngx.var.remote_port)
  end

  function kong.client.get_consumer()
    return ngx.ctx.authenticated_consumer
  end

  function kong.client.get_credential()
    return ngx.ctx.authenticated_credential
  end

  function kong.client.authenticate(consumer, credential)
    if consumer ~= nil and type(consumer) ~= "table" then
      error("consumer must be a table or nil", 2)
    elseif credential ~= nil and type(credential) ~= "table" then
      error("credential must be a table or nil", 2)
    elseif credential == nil and consumer == nil then
      error("either credential or consumer must be provided", 2)
    end
    local ctx = ngx.ctx
    ctx.authenticated_consumer = consumer
    ctx.authenticated_credential = credential
  end

  function kong.client.load_consumer(consumer_id, search_by_username)
    if type(consumer_id) ~= "string" then
      error("consumer_id must be a string", 2)
    end
    local is_uuid = consumer_id:match(
      "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$")
    if not is_uuid and not search_by_username then
      error("cannot load a consumer with an id that is not a uuid", 2)
    end
    local consumer = is_uuid and rig.consumers_by_id[consumer_id:lower()] or nil
    if not consumer and search_by_username then
      consumer = rig.consumers_by_username[consumer_id]
    end
    return consumer
  end

  -- kong.request --------------------------------------------------------------------------
  function kong.request.get_headers(max_headers)
    if max_headers == nil then
      return ngx.req.get_headers(MAX_HEADERS_DEFAULT)
    end
    if type(max_headers) ~= "number" then
      error("max_headers must be a number", 2)
    elseif max_headers < MIN_HEADERS then
      error("max_headers must be >= " .. MIN_HEADERS, 2)
    elseif max_headers > MAX_HEADERS then
      error("max_headers must be <= " .. MAX_HEADERS, 2)
    end
    return ngx.req.get_headers(max_headers)
  end

  function kong.request.get_header(name)
    if type(name) ~= "string" then
      error("header name must be a string", 2)
    end
    local value = kong.request.get_headers()[name]
    if type(value) == "table" then
      return value[1]
    end
    return value
  end

  function kong.request.get_port()
    return tonumber(ngx.var.server_port)
  end

  -- kong.service.request --------------------------------------------------------------------
  function kong.service.request.set_header(name, value)
    if type(name) ~= "string" then
      error("header name must be a string", 2)
    end
    local vtype = type(value)
    if vtype ~= "string" and vtype ~= "number" and vtype ~= "boolean" then
      error("invalid header value for \"" .. name .. "\": got " .. vtype
            .. ", expected string, number or boolean", 2)
    end
    ngx.req.set_header(name, tostring(value))
  end

  function kong.service.request.clear_header(name)
    if type(name) ~= "string" then
      error("header name must be a string", 2)
    end
    ngx.req.clear_header(name)
  end

  function kong.service.request.set_headers(headers)
    if type(headers) ~= "table" then
      error("headers must be a table", 2)
    end
    check_headers_table(headers)
    for name, value in pairs(headers) do
      if type(value) == "table" then
        ngx.req.set_header(name, value)
      else
        ngx.req.set_header(name, tostring(value))
      end
    end
  end

  -- kong.response ---------------------------------------------------------------------------
  kong.response.exit = exit
  kong.response.error = error_response

  -- kong.log ---------------------------------------------------------------------------------
  kong.log.err = namespaced(ngx.ERR)
  kong.log.warn = namespaced(ngx.WARN)
  kong.log.notice = namespaced(ngx.NOTICE)
  kong.log.info = namespaced(ngx.INFO)
  kong.log.debug = namespaced(ngx.DEBUG)

  function kong.log.set_serialize_value(key, value)
    if type(key) ~= "string" then
      error("key must be a string", 2)
    end
    local vtype = type(value)
    if vtype ~= "nil" and vtype ~= "string" and vtype ~= "number" and vtype ~= "boolean"
       and vtype ~= "table" then
      error("value must be a number, string, boolean, table or nil", 2)
    end
    local ctx = ngx.ctx
    ctx.serialize_values = ctx.serialize_values or {}
    set_path(ctx.serialize_values, key, value)
  end

  function kong.log.serialize()
    local ctx = ngx.ctx
    local out = {
      client_ip = ngx.var.remote_addr,
      route = ctx.route,
      service = ctx.service,
      consumer = ctx.authenticated_consumer,
      request = { uri = ngx.var.request_uri, method = ngx.req.get_method() },
    }
    for key, value in pairs(ctx.serialize_values or {}) do
      out[key] = value
    end
    return out
  end

  -- kong.plugin, kong.router, kong.nginx --------------------------------------------------
  function kong.plugin.get_id()
    return ngx.ctx.plugin_id
  end

  function kong.router.get_route()
    return ngx.ctx.route
  end

  function kong.router.get_service()
    return ngx.ctx.service
  end

  function kong.nginx.get_ctx(key)
    return ngx.ctx[key]
  end

  function kong.nginx.set_ctx(key, value)
    ngx.ctx[key] = value
  end

  return kong
end

M.request_id = request_id

return M
