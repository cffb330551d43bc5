-- The Kong-side half of cilium-identity, offered to the plugin server as two PDK methods.
--
-- Kong's plugin-server bridge resolves a PDK method name by walking the `kong` table along
-- its dotted path, so a function stored at `kong.cilium_identity.facts` is callable from
-- the Python plugin like any PDK method, at the cost of one round trip. Two calls make a
-- whole decision:
--
--   facts(spec)     everything the decision needs, read natively in one go; it also
--                   removes every client-sent header under the plugin's header prefix,
--                   however many header lines the request has (no 100-line window)
--   apply(decision) records the decision for the guard and for Kong's log serializer,
--                   then either refuses the request (kong.response.error) or authenticates
--                   the token's consumer and sets the upstream identity headers
--
-- The guard plugin (handler.lua) refuses every request that reaches it without a decision
-- recorded by apply(), which is what makes a dead or stalled plugin server fail closed.

local DECIDED_KEY = "cilium_identity_decision"
local SERIALIZE_KEY = "cilium_identity"
local JWT_CTX_KEY = "authenticated_jwt_token"

local type = type
local pairs = pairs
local ipairs = ipairs
local lower = string.lower
local sub = string.sub

local _M = { DECIDED_KEY = DECIDED_KEY, SERIALIZE_KEY = SERIALIZE_KEY }


local function text(value)
  if type(value) == "string" and value ~= "" then
    return value
  end
  return false
end


-- Every line of the named header, in arrival order (nginx folds repeated lines into a list).
local function lines_of(headers, name)
  local value = headers[name]
  if type(value) == "table" then
    return value
  end
  if type(value) == "string" then
    return { value }
  end
  return {}
end


-- Removes every client header whose lower-cased name starts with `prefix`; returns how
-- many header lines that were.
local function clear_prefixed(headers, prefix)
  local removed = 0
  if prefix == "" then
    return removed
  end
  local length = #prefix
  for name, value in pairs(headers) do
    if sub(name, 1, length) == prefix then
      ngx.req.clear_header(name)
      removed = removed + (type(value) == "table" and #value or 1)
    end
  end
  return removed
end


local function hex(bytes)
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end


-- W3C traceparent of Kong's active span when Kong traces the request, else the client's.
local function traceparent(headers)
  local tracing = kong.tracing
  local span = tracing and tracing.active_span and tracing.active_span()
  if type(span) == "table" and type(span.trace_id) == "string"
     and type(span.span_id) == "string" then
    return string.format("00-%s-%s-%s", hex(span.trace_id), hex(span.span_id),
                         span.should_sample and "01" or "00")
  end
  return text(headers["traceparent"])
end


local function facts(spec)
  if type(spec) ~= "table" then
    spec = {}
  end
  -- 0 lifts ngx_lua's default limit of 100 header lines: all of them are read
  local headers = ngx.req.get_headers(0)
  local prefix = type(spec.header_prefix) == "string" and lower(spec.header_prefix) or ""
  local forwarded = spec.ip_source == "forwarded"
  local client = kong.client

  local ip
  if forwarded then
    ip = client.get_forwarded_ip()
  else
    ip = client.get_ip()
  end
  local result = {
    v = 1,
    consumer = client.get_consumer() or false,
    credential = client.get_credential() ~= nil,
    ip = text(ip),
    forged = clear_prefixed(headers, prefix),
    tokens = {},
    jwt = false,
  }
  if type(spec.token_header) == "string" and spec.token_header ~= "" then
    result.tokens = lines_of(headers, lower(spec.token_header))
  end
  if spec.jwt then
    result.jwt = text(kong.ctx.shared[JWT_CTX_KEY])
  end
  if spec.traceparent then
    result.traceparent = traceparent(headers)
  end
  if spec.ports then
    local port
    if forwarded then
      port = client.get_forwarded_port()
    else
      port = client.get_port()
    end
    result.port = port or false
    result.server_port = kong.request.get_port() or false
  end
  return result
end


local function apply_upstream(upstream)
  if type(upstream) ~= "table" then
    return
  end
  for name, value in pairs(upstream) do
    if type(name) == "string" then
      if type(value) == "string" and value ~= "" then
        kong.service.request.set_header(name, value)
      else
        kong.service.request.clear_header(name)
      end
    end
  end
end


local function apply(decision)
  if type(decision) ~= "table" or type(decision.allow) ~= "boolean" then
    -- a malformed answer proves nothing: refuse
    ngx.ctx[DECIDED_KEY] = { decision = "deny", reason = "internal_error" }
    kong.log.err("cilium-identity: malformed decision from the plugin server")
    return kong.response.error(500, "An unexpected error occurred")
  end

  local entry = type(decision.log) == "table" and decision.log or {}
  ngx.ctx[DECIDED_KEY] = entry
  kong.log.set_serialize_value(SERIALIZE_KEY, entry)

  if not decision.allow then
    local status = decision.status
    if type(status) ~= "number" or status < 400 or status > 599 then
      status = 500
    end
    local message = type(decision.message) == "string" and decision.message or nil
    local headers = type(decision.headers) == "table" and decision.headers or nil
    return kong.response.error(status, message, headers)
  end

  local authenticate = decision.authenticate
  if type(authenticate) == "table" and type(authenticate.consumer) == "table" then
    kong.client.authenticate(authenticate.consumer, authenticate.credential)
  end
  apply_upstream(decision.upstream)
  return true
end


-- Installs the two methods on the `kong` global (idempotent).
function _M.register(pdk)
  if type(pdk) ~= "table" then
    return
  end
  local methods = pdk.cilium_identity
  if type(methods) ~= "table" then
    methods = {}
    pdk.cilium_identity = methods
  end
  methods.facts = facts
  methods.apply = apply
end


_M.facts = facts
_M.apply = apply

return _M
