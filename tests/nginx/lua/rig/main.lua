-- Entry points of the rig's nginx.conf: a small Kong stand-in. init() loads the JSON made
-- from a Kong declarative file; access() runs the route's plugins in priority order, each
-- in a coroutine with Kong's delayed-response semantics, then lets nginx proxy_pass.
local cjson = require "cjson.safe"
local pdk = require "rig.pdk"
local bridge = require "rig.bridge"
local keyauth = require "rig.keyauth"
local schema = require "rig.schema"

local M = {}

local state = {
  routes = {},
  consumers_by_id = {},
  consumers_by_username = {},
  credentials = {},
}

local function read_json(path)
  local file = assert(io.open(path, "rb"))
  local text = file:read("*a")
  file:close()
  return assert(cjson.decode(text))
end

-- Kong loads every installed plugin's handler and schema at start (KONG_PLUGINS), whether a
-- route configures it or not; loading may install PDK extensions on `kong`.
local installed = {}

local function load_installed(names, servers)
  for _, name in ipairs(names) do
    if not servers[name] and name ~= "key-auth" then
      local handler = require("kong.plugins." .. name .. ".handler")
      local ok, plugin_schema = pcall(require, "kong.plugins." .. name .. ".schema")
      installed[name] = { handler = handler, schema = ok and plugin_schema or nil }
    end
  end
end

local function load_plugins(route, servers)
  local plugins = {}
  for _, entry in ipairs(route.plugins) do
    local handler, plugin_schema
    if servers[entry.name] then
      local server = servers[entry.name]
      handler = bridge.new(server.info, server.socket, kong)
      bridge.remember_json(entry.config, entry.config_json)
    elseif entry.name == "key-auth" then
      handler = keyauth
    elseif installed[entry.name] then
      handler, plugin_schema = installed[entry.name].handler, installed[entry.name].schema
    else
      error("plugin '" .. entry.name .. "' is not installed (KONG_PLUGINS)")
    end
    local conf = entry.config
    if plugin_schema then
      conf = schema.with_defaults(plugin_schema, conf)
    end
    plugins[#plugins + 1] = { id = entry.id, name = entry.name, handler = handler, conf = conf }
  end
  table.sort(plugins, function(a, b)
    if a.handler.PRIORITY == b.handler.PRIORITY then
      return a.name < b.name
    end
    return a.handler.PRIORITY > b.handler.PRIORITY
  end)
  return plugins
end

function M.init(path)
  local config = read_json(path)
  state.options = config.options or {}
  for _, consumer in ipairs(config.consumers) do
    state.consumers_by_id[consumer.id] = consumer
    state.consumers_by_username[consumer.username] = consumer
  end
  for _, credential in ipairs(config.credentials) do
    state.credentials[credential.key] = credential
  end
  _G.kong = pdk.new(state)
  keyauth.bind(state)
  load_installed(config.installed or {}, config.servers)
  for _, route in ipairs(config.routes) do
    route.runtime_plugins = load_plugins(route, config.servers)
    state.routes[#state.routes + 1] = route
  end
end

function M.init_worker()
  for _, plugin in pairs(installed) do
    if plugin.handler.init_worker then
      plugin.handler:init_worker()
    end
  end
end

-- Longest path prefix wins, as Kong's router does for prefix paths.
local function match_route(uri)
  local best, best_len, best_path = nil, -1, nil
  for _, route in ipairs(state.routes) do
    for _, path in ipairs(route.paths) do
      if uri:sub(1, #path) == path and #path > best_len then
        best, best_len, best_path = route, #path, path
      end
    end
  end
  return best, best_path
end

local function flush_delayed_response(ctx)
  ctx.delay_response = nil
  if type(ctx.delayed_response_callback) == "function" then
    ctx.delayed_response_callback(ctx)
    return
  end
  local dr = ctx.delayed_response
  local message = type(dr.content) == "table" and dr.content.message or dr.content
  kong.response.error(dr.status_code, message, dr.headers)
end

function M.access()
  local ctx = ngx.ctx
  local route, matched = match_route(ngx.var.uri)
  if not route then
    return kong.response.exit(404, { message = "no Route matched with those values" })
  end
  ctx.route = { id = route.id, name = route.name, paths = route.paths }
  ctx.service = route.service

  ctx.delay_response = true
  for _, plugin in ipairs(route.runtime_plugins) do
    if not ctx.delayed_response then
      ctx.plugin_id = plugin.id
      ctx.plugin_name = plugin.name
      local co = coroutine.create(plugin.handler.access)
      local ok, err = coroutine.resume(co, plugin.handler, plugin.conf)
      if not ok then
        kong.log.err(err)
        ctx.delayed_response = {
          status_code = 500,
          content = { message = "An unexpected error occurred" },
        }
        ctx.KONG_UNEXPECTED = true
      end
      ctx.plugin_id, ctx.plugin_name = nil, nil
    end
  end
  ctx.delay_response = nil

  if ctx.delayed_response then
    return flush_delayed_response(ctx)
  end

  local uri = ngx.var.uri
  if route.strip_path then
    uri = uri:sub(#matched + 1)
    if uri:sub(1, 1) ~= "/" then
      uri = "/" .. uri
    end
  end
  ngx.var.upstream_uri = uri
end

function M.header_filter()
  ngx.header["X-Kong-Request-Id"] = pdk.request_id()
end

function M.log()
  local values = ngx.ctx.serialize_values
  if values then
    ngx.shared.rig:set("serialize:" .. pdk.request_id(), cjson.encode(values))
  end
end

return M
