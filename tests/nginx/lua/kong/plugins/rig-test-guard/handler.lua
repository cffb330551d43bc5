-- Test-only stand-in for cilium-identity-guard until the shipped one lands: refuses (503)
-- any request that cilium-identity did not mark as decided (config guard_marker: true).
local Guard = { PRIORITY = 999, VERSION = "0.0.1" }

function Guard:access(_)
  if kong.ctx.shared.cilium_identity_decided then
    return
  end
  kong.log.err("rig-test-guard: no decision for this request")
  return kong.response.error(503, "Service unavailable")
end

return Guard
