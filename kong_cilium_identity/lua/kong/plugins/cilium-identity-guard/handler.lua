-- cilium-identity-guard: the Kong-side companion of the cilium-identity plugin.
--
-- Kong proxies a request when an external plugin's call fails (connection refused, read
-- timeout, closed socket, error reply): a dead, stopped or flooded plugin server would let
-- every request through unenforced. This plugin runs inside nginx, after cilium-identity
-- (priority 1000) and before ip-restriction (990) and acl (950), and refuses every request
-- that reaches it without a decision recorded by the cilium-identity plugin server. It
-- needs nothing from the plugin server to do so.
--
-- Loading it also installs the PDK methods the plugin server uses to gather a request's
-- facts and to apply its decision natively (extension.lua): fewer round trips, and no
-- header window for the client-sent headers the plugin must remove.

local extension = require("kong.plugins.cilium-identity-guard.extension")

local DECIDED_KEY = extension.DECIDED_KEY

extension.register(kong)

local CiliumIdentityGuard = {
  PRIORITY = 999,
  VERSION = "0.2.0",
}


function CiliumIdentityGuard:init_worker()
  extension.register(kong)
end


function CiliumIdentityGuard:access(_)
  if ngx.ctx[DECIDED_KEY] ~= nil then
    return
  end
  kong.log.err("cilium-identity-guard: no decision from the cilium-identity plugin server ",
               "for this request (server down, stalled or overloaded, or cilium-identity ",
               "not enabled where the guard is): refusing it")
  kong.log.set_serialize_value(extension.SERIALIZE_KEY,
                               { decision = "deny", reason = "no_decision" })
  return kong.response.error(503, "Service unavailable (no_decision)")
end


return CiliumIdentityGuard
