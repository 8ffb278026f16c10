-- Empties every host of a chassis (before work on its power or enclosure):
-- all of them are cordoned first, so that no VM moves from one host of the
-- chassis to another, then each is evacuated in turn. A VM no other chassis
-- can take is named; the run ends `partial` (exit 13) when any stayed.
--
--   vmig run runbooks/drain-chassis.lua lab-chassis-1
--   vmig rollback --last     # brings every VM back afterwards

local chassis = ...
if chassis == nil then
  error({ code = "invalid", message = "usage: vmig run runbooks/drain-chassis.lua CHASSIS" })
end

local members = {}
for _, h in ipairs(vmig.hosts()) do
  if h.chassis == chassis then
    if not h.reachable then
      error({ code = "unreachable", message = h.name .. " of chassis " .. chassis .. " does not answer", host = h.name })
    end
    table.insert(members, h.name)
  end
end
if #members == 0 then
  error({ code = "not_found", message = "no host of the inventory is in chassis " .. chassis })
end
vmig.log.info("chassis " .. chassis .. ": " .. table.concat(members, ", "))

for _, host in ipairs(members) do
  vmig.cordon(host, { reason = "draining chassis " .. chassis })
end

local stayed = {}
for _, host in ipairs(members) do
  local report = vmig.evacuate(host)
  for _, vm in ipairs(report.vms) do
    if vm.status == "left" or vm.status == "blocked" or vm.status == "failed"
      or vm.status == "slow" or vm.status == "not_started" then
      table.insert(stayed, vm.vm .. " on " .. host)
    end
  end
end

if #stayed > 0 then
  error({ code = "partial", message = "VMs stayed in chassis " .. chassis .. ": " .. table.concat(stayed, ", ") })
end
vmig.log.info("chassis " .. chassis .. " is empty")
