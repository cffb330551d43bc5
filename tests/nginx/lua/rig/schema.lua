-- Fills a Lua plugin's config defaults from its schema.lua the way Kong's DAO does for
-- absent values: a field's `default`, or a record built from its subfields' defaults.
local M = {}

local function field_list(record)
  local out = {}
  for _, entry in ipairs(record.fields or {}) do
    local name, field = next(entry)
    out[#out + 1] = { name = name, field = field }
  end
  return out
end

local function fill(record, value)
  value = value or {}
  for _, item in ipairs(field_list(record)) do
    local current = value[item.name]
    if current == nil then
      if item.field.default ~= nil then
        value[item.name] = item.field.default
      elseif item.field.type == "record" then
        value[item.name] = fill(item.field, nil)
      end
    elseif item.field.type == "record" and type(current) == "table" then
      fill(item.field, current)
    end
  end
  return value
end

--- The config record of a plugin schema (the `config` entry of its top-level fields).
function M.with_defaults(schema, config)
  for _, item in ipairs(field_list(schema)) do
    if item.name == "config" then
      return fill(item.field, config)
    end
  end
  return config or {}
end

return M
