-- cilium-identity fail-closed guard for Kong's post-function plugin (priority -1000),
-- access phase, on every route or service where cilium-identity runs in enforce mode.
--
-- Kong proxies a request when its external plugin server cannot be reached or answers
-- with an error (kong/runloop/plugin_servers: the error is logged and the request goes on).
-- cilium-identity marks each request it lets through with
--   kong.ctx.shared.cilium_identity_decided = true
-- (one PDK call from the plugin); a request reaching this guard without that mark was
-- never decided, so it is refused. kong.ctx.shared lives on the gateway only: a client
-- cannot set it. Denied requests never get here (the plugin ended them).
--
-- The chunk returns the per-request function (post-function's "returns a function" form),
-- so nothing runs when Kong compiles the snippet.
return function()
  if kong.ctx.shared.cilium_identity_decided ~= true then
    kong.log.err("cilium-identity did not decide on this request ",
                 "(plugin server unreachable or failed): refusing it")
    return kong.response.error(503, "Service unavailable")
  end
end
