-- The external-plugin bridge, modelled on Kong 3.9's kong/runloop/plugin_servers
-- (plugin.lua, rpc/mp_rpc.lua, rpc/util.lua): per-worker instance cache, StartInstance /
-- CloseInstance, the HandleEvent/Step loop and Kong's failure semantics:
--   * StartInstance fails          -> error() -> the runner answers 500
--   * HandleEvent/Step fails       -> log the error, return: the request CONTINUES (fail open)
--   * error says no plugin instance -> drop this plugin's instances, retry (no retry cap)
--   * a PDK function raises         -> the error propagates (plugin coroutine fails -> 500)
-- Every RPC is counted in the `rig` shared dict ("rpc") so benchmarks can read round trips.
local cjson = require "cjson.safe"
local msgpack = require "MessagePack"

local nil_pack = msgpack.packers["nil"]
msgpack.packers.userdata = function(buffer, userdata)
  if userdata == cjson.null then
    return nil_pack(buffer)
  end
  error("pack 'userdata' is unimplemented")
end
msgpack.packers["function"] = function(buffer, fn)
  fn(buffer)
end

local function empty_array(buffer)
  msgpack.packers.array(buffer, {}, 0)
end

local function empty_map(buffer)
  msgpack.packers.map(buffer, {}, 0)
end

-- header/query multimaps as Kong sends them: every value a list ({} when empty)
local function fix_mmap(t)
  local out, empty = {}, true
  for k, v in pairs(t) do
    empty = false
    if v == true then
      out[k] = empty_array
    elseif type(v) == "string" then
      out[k] = { v }
    else
      out[k] = v
    end
  end
  if empty then
    return empty_map
  end
  return out
end

local function fix_raw(bin)
  return function(buffer)
    msgpack.packers.binary(buffer, bin)
  end
end

local MUST_FIX = {
  ["kong.request.get_query"] = fix_mmap,
  ["kong.request.get_headers"] = fix_mmap,
  ["kong.response.get_headers"] = fix_mmap,
  ["kong.service.response.get_headers"] = fix_mmap,
  ["kong.request.get_raw_body"] = fix_raw,
  ["kong.response.get_raw_body"] = fix_raw,
  ["kong.service.response.get_raw_body"] = fix_raw,
}

local STEP_BY_METHOD = {
  ["kong.client.get_credential"] = "plugin.StepCredential",
  ["kong.client.load_consumer"] = "plugin.StepConsumer",
  ["kong.client.get_consumer"] = "plugin.StepConsumer",
  ["kong.client.authenticate"] = "plugin.StepCredential",
  ["kong.node.get_memory_stats"] = "plugin.StepMemoryStats",
  ["kong.router.get_route"] = "plugin.StepRoute",
  ["kong.router.get_service"] = "plugin.StepService",
  ["kong.request.get_query"] = "plugin.StepMultiMap",
  ["kong.request.get_headers"] = "plugin.StepMultiMap",
  ["kong.response.get_headers"] = "plugin.StepMultiMap",
  ["kong.service.response.get_headers"] = "plugin.StepMultiMap",
}

-- The API table Kong resolves PDK method names against: explicit entries first, else the
-- dotted path walked through `kong`.
local function exposed_api(kong)
  return {
    kong = kong,
    ["kong.nginx.get_var"] = function(name)
      return ngx.var[name]
    end,
    ["kong.nginx.get_ctx"] = function(key)
      return ngx.ctx[key]
    end,
    ["kong.nginx.set_ctx"] = function(key, value)
      ngx.ctx[key] = value
    end,
    ["kong.ctx.shared.get"] = function(key)
      return kong.ctx.shared[key]
    end,
    ["kong.ctx.shared.set"] = function(key, value)
      kong.ctx.shared[key] = value
    end,
    ["kong.request.get_headers"] = function(max)
      return kong.request.get_headers(max)
    end,
    ["kong.request.get_header"] = function(name)
      return kong.request.get_header(name)
    end,
    ["kong.log.serialize"] = function()
      return cjson.encode(kong.log.serialize())
    end,
  }
end

local function index_table(tbl, field)
  if tbl[field] then
    return tbl[field]
  end
  local node = tbl
  for segment in ngx.re.gmatch(field, "\\w+", "jo") do
    if node[segment[0]] then
      node = node[segment[0]]
    else
      return nil
    end
  end
  return node
end

local M = {}

local Rpc = {}
Rpc.__index = Rpc

local function count(key)
  ngx.shared.rig:incr(key, 1, 0)
end

function Rpc:call(method, ...)
  self.msg_id = self.msg_id + 1
  local msg_id = self.msg_id
  count("rpc")
  count("rpc:" .. method)

  local sock, err = ngx.socket.connect("unix:" .. self.socket)
  if not sock then
    kong.log.err("trying to connect: ", err)
    return nil, err
  end

  local sent
  sent, err = sock:send(msgpack.pack({ 0, msg_id, method, { ... } }))
  if not sent then
    sock:setkeepalive()
    return nil, err
  end

  local reader = msgpack.unpacker(function()
    return sock:receiveany(4096)
  end)
  while true do
    local ok, data = reader()
    if not ok then
      sock:setkeepalive()
      return nil, "no data"
    end
    if data[1] ~= 2 then -- notifications ([2, label, args]) are ignored, as Python sends none
      assert(data[1] == 1, "RPC response expected from Go plugin server")
      assert(data[2] == msg_id, "unexpected RPC response ID from Go plugin server")
      sock:setkeepalive()
      if data[3] ~= nil then
        return nil, data[3]
      end
      return data[4]
    end
  end
end

local function call_pdk_method(api, method_name, args)
  local method = index_table(api, method_name)
  if not method then
    kong.log.err("could not find pdk method: ", method_name)
    return
  end
  local ret
  if type(args) == "table" then
    ret = method(unpack(args))
  else
    ret = method(args)
  end
  local fix = MUST_FIX[method_name]
  if fix then
    ret = fix(ret)
  end
  return ret
end

local function step_method(step_in, result)
  return (type(result) == "table" and result._method)
    or STEP_BY_METHOD[step_in.Data.Method]
    or "plugin.Step"
end

local function bridge_loop(self, instance_id, phase)
  local step_in, err = self.rpc:call("plugin.HandleEvent", {
    InstanceId = instance_id,
    EventName = phase,
  })
  if not step_in then
    return nil, err
  end
  local event_id = step_in.EventId
  while step_in.Data ~= "ret" do
    local result = call_pdk_method(self.api, step_in.Data.Method, step_in.Data.Args)
    step_in, err = self.rpc:call(step_method(step_in, result), {
      EventId = event_id,
      Data = result,
    })
    if not step_in then
      return nil, err
    end
  end
end

-- Per-worker instance cache, keyed by plugin id (kong.plugin.get_id()).
local running_instances = {}

local WAIT_STEP, MAX_WAIT_STEPS = 0.1, 100

local function reset_instances_for_plugin(name)
  for key, instance in pairs(running_instances) do
    if instance.plugin_name == name then
      running_instances[key] = nil
    end
  end
end

function M.reset_instances(name)
  reset_instances_for_plugin(name)
end

-- Kong's StartInstance carries cjson.encode(conf), where Kong's config arrays keep cjson's
-- array metatable (an empty one encodes as []). Debian's lua-cjson has no array metatable,
-- so the rig sends the JSON text Python made for the same table.
local config_json = setmetatable({}, { __mode = "k" })

function M.remember_json(conf, text)
  config_json[conf] = text
end

function Rpc:start_instance(plugin_name, conf)
  local status, err = self:call("plugin.StartInstance", {
    Name = plugin_name,
    Config = config_json[conf] or cjson.encode(conf),
  })
  if status == nil then
    return nil, err
  end
  return { id = status.Id, conf = conf, seq = conf.__seq__ }
end

local function get_instance_id(self, conf)
  local key = kong.plugin.get_id()
  local info = running_instances[key]

  local waited = 0
  while info and not info.id do -- another request of this worker is starting it
    ngx.sleep(WAIT_STEP)
    waited = waited + 1
    if waited > MAX_WAIT_STEPS then
      running_instances[key] = nil
      return nil, "Could not claim instance_id for " .. self.name .. " (key: " .. key .. ")"
    end
    info = running_instances[key]
  end

  if info and info.id and info.seq == conf.__seq__ and info.conf
     and info.conf.__plugin_id == key then
    return info.id
  end

  local old_id = info and info.id
  if not info then
    info = { conf = conf, seq = conf.__seq__ }
    running_instances[key] = info
  else
    info.id = nil
  end

  local started, err = self.rpc:start_instance(self.name, conf)
  if started == nil then
    kong.log.err("starting instance: ", err)
    running_instances[key] = nil
    error(err)
  end
  info.id = started.id
  info.plugin_name = self.name
  info.conf = started.conf
  info.seq = started.seq

  if old_id then
    self.rpc:call("plugin.CloseInstance", old_id)
  end
  return info.id
end

local function handle_event(self, conf, phase)
  local instance_id, err = get_instance_id(self, conf)
  if not err then
    local _
    _, err = bridge_loop(self, instance_id, phase)
  end
  if err then
    -- err:lower() raises on a non-string error (a table from the server), as in Kong
    if err:lower():find("no plugin instance", 1, true) then
      reset_instances_for_plugin(self.name)
      kong.log.warn(err)
      return handle_event(self, conf, phase)
    end
    kong.log.err(err) -- and the request goes on: Kong's fail-open
  end
end

--- A Kong-style handler for one external plugin. `info` is the first entry of the
--- server's dump (Name, Priority, Version, Phases); `socket` is the Unix socket path.
function M.new(info, socket, kong_global)
  local self = {
    name = info.Name,
    PRIORITY = info.Priority,
    VERSION = info.Version,
    rpc = setmetatable({ msg_id = 0, socket = socket }, Rpc),
    api = exposed_api(kong_global),
  }
  for _, phase in ipairs(info.Phases or {}) do
    if phase ~= "log" then -- the rig runs the access phase only
      self[phase] = function(handler, conf)
        return handle_event(handler, conf, phase)
      end
    end
  end
  return self
end

return M
