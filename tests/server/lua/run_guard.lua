-- Runs the guard snippet the way post-function does, against a stub of the PDK it uses.
-- usage: luajit run_guard.lua GUARD_FILE MARK   (MARK: true | false | nil | string)
-- prints one line: "passed" or "refused <status> <message>", then "log <n>".
local guard_file, mark = arg[1], arg[2]
local marks = { ["true"] = true, ["false"] = false, ["nil"] = nil, string = "true" }

local logged = 0
local exited = nil
kong = {
  ctx = { shared = { cilium_identity_decided = marks[mark] } },
  log = { err = function(...) logged = logged + 1 end },
  response = {
    error = function(status, message)
      exited = { status = status, message = message }
      return nil
    end,
  },
}

local chunk = assert(loadfile(guard_file))
local ok, per_request = pcall(chunk)
assert(ok and type(per_request) == "function", "the snippet must return a function")
assert(exited == nil and logged == 0, "compiling the snippet must not act")
per_request()
if exited then
  print(string.format("refused %d %s", exited.status, exited.message))
else
  print("passed")
end
print("log " .. logged)
