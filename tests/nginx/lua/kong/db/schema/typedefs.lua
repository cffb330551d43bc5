-- The few Kong typedefs a plugin schema.lua refers to (kong/db/schema/typedefs.lua), enough
-- for the rig to load a schema and fill its config defaults.
local http_protocols = { "grpc", "grpcs", "http", "https" }

return {
  protocols_http = {
    type = "set",
    required = true,
    default = http_protocols,
    elements = { type = "string", one_of = http_protocols },
  },
  no_consumer = { type = "foreign", reference = "consumers", eq = ngx.null },
  no_route = { type = "foreign", reference = "routes", eq = ngx.null },
  no_service = { type = "foreign", reference = "services", eq = ngx.null },
}
