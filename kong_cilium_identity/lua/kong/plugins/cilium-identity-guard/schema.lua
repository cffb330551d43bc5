-- cilium-identity-guard has no settings: it refuses what cilium-identity did not decide.
local typedefs = require("kong.db.schema.typedefs")

return {
  name = "cilium-identity-guard",
  fields = {
    { protocols = typedefs.protocols_http },
    { config = { type = "record", fields = {} } },
  },
}
