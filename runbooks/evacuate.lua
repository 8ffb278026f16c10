-- Empties a host for maintenance with vmig's own evacuation: every VM is
-- planned at once (prechecks against every host, memory spent as VMs are
-- placed, redundancy groups kept apart, cordoned hosts passed by), the host
-- is cordoned, and the VMs move live, PARALLEL at a time (default 2).
--
--   vmig run runbooks/evacuate.lua hostA            # asks once, then moves
--   vmig run runbooks/evacuate.lua hostA --dry-run  # prints the plan only
--   vmig run runbooks/evacuate.lua hostA 4 --yes    # from cron, 4 at once
--
-- Ends with the error `partial` (exit 13) when VMs stayed, each named with
-- why; they keep running where they were. `vmig rollback --last` (or
-- vmig.rollback(report.run)) brings the VMs back.

local host, parallel = ...
if host == nil then
  error({ code = "invalid", message = "usage: vmig run runbooks/evacuate.lua HOST [PARALLEL]" })
end

local report = vmig.evacuate(host, { parallel = tonumber(parallel) or 2 })

local stayed = {}
for _, vm in ipairs(report.vms) do
  if vm.status ~= "moved" and vm.status ~= "planned" and vm.status ~= "stopped" and vm.status ~= "pinned" then
    table.insert(stayed, vm.vm .. " (" .. (vm.rule or vm.code or vm.status) .. ")")
  end
end

if not report.complete then
  error({
    code = "partial",
    message = string.format("%d VM(s) stayed on %s: %s", #stayed, host, table.concat(stayed, ", ")),
    host = host,
  })
end
if report.dry_run then
  vmig.log.info("dry run: " .. host .. " would be emptied (run " .. report.run .. ")")
else
  vmig.log.info(host .. " has no running VM left that could move (run " .. report.run .. ")")
end
