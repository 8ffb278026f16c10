-- Error handling in a runbook: moves VM to HOST, waiting and trying again
-- while the VM is busy (another migration) or the move rolled back, and
-- saying plainly what happened otherwise.
--
--   vmig run runbooks/careful-migrate.lua VM HOST [TRIES]

local vm, host, tries = ...
if vm == nil or host == nil then
  error({ code = "invalid", message = "usage: vmig run runbooks/careful-migrate.lua VM HOST [TRIES]" })
end
tries = tonumber(tries or "3")

if vmig.vm(vm).host == host then
  vmig.log.info(vm .. " is on " .. host .. " already")
  return
end

for attempt = 1, tries do
  -- pcall: the error value has fields (code, message, vm, host, retryable).
  local ok, result = pcall(vmig.migrate, vm, host)
  if ok then
    if result.dry_run then
      vmig.log.info("would move " .. vm .. " to " .. host)
    else
      vmig.log.info(string.format("%s runs on %s: downtime %.1f ms", vm, host, result.downtime_ms or 0))
    end
    return
  end
  local e = result
  if not vmig.is_error(e) then
    error(e) -- the script's own mistake: let it end the run with its traceback
  end
  if not e.retryable or attempt == tries then
    vmig.log.error(string.format("giving up after %d attempt(s): %s", attempt, tostring(e)))
    error(e)
  end
  vmig.log.warn(string.format("attempt %d: %s; trying again in 2 s", attempt, e.code))
  vmig.sleep(2)
end
