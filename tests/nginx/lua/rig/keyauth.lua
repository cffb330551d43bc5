-- key-auth as the rig plays it (Kong's bundled plugin, priority 1250): the key from a header
-- names a credential of the loaded configuration; its consumer is authenticated and the
-- consumer headers are set for the upstream. With `anonymous`, a missing or unknown key
-- authenticates that consumer without a credential.
local KeyAuth = { PRIORITY = 1250, VERSION = "3.9.1" }

local rig -- set by main.init

function KeyAuth.bind(state)
  rig = state
end

local function set_consumer(consumer, credential)
  local set_header = kong.service.request.set_header
  local clear_header = kong.service.request.clear_header
  kong.client.authenticate(consumer, credential)
  if consumer and consumer.id then
    set_header("X-Consumer-ID", consumer.id)
  else
    clear_header("X-Consumer-ID")
  end
  if consumer and consumer.custom_id and consumer.custom_id ~= ngx.null then
    set_header("X-Consumer-Custom-ID", consumer.custom_id)
  else
    clear_header("X-Consumer-Custom-ID")
  end
  if consumer and consumer.username and consumer.username ~= ngx.null then
    set_header("X-Consumer-Username", consumer.username)
  else
    clear_header("X-Consumer-Username")
  end
  if credential then
    set_header("X-Credential-Identifier", credential.id)
    clear_header("X-Anonymous-Consumer")
  else
    clear_header("X-Credential-Identifier")
    set_header("X-Anonymous-Consumer", "true")
  end
end

local function anonymous_or(conf, status, message)
  local anonymous = conf.anonymous
  if anonymous and anonymous ~= ngx.null then
    local consumer = rig.consumers_by_id[anonymous] or rig.consumers_by_username[anonymous]
    if not consumer then
      return kong.response.error(500, "An unexpected error occurred")
    end
    return set_consumer(consumer, nil)
  end
  return kong.response.error(status, message, { ["WWW-Authenticate"] = "Key" })
end

function KeyAuth:access(conf)
  local key
  for _, name in ipairs(conf.key_names or { "apikey" }) do
    key = kong.request.get_header(name)
    if key then
      if not conf.hide_credentials then
        break
      end
      kong.service.request.clear_header(name)
      break
    end
  end
  if type(key) ~= "string" or key == "" then
    return anonymous_or(conf, 401, "No API key found in request")
  end
  local credential = rig.credentials[key]
  if not credential then
    return anonymous_or(conf, 401, "Invalid authentication credentials")
  end
  return set_consumer(rig.consumers_by_id[credential.consumer.id], credential)
end

return KeyAuth
