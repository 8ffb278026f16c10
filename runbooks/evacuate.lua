-- Moves every running VM off a host, live, two at a time, each to the
-- reachable host with the most free memory left once the VMs already
-- placed there are counted. For host maintenance:
--
--   vmig run runbooks/evacuate.lua hostA            # asks once, then moves
--   vmig run runbooks/evacuate.lua hostA --dry-run  # prints the plan only
--   vmig run runbooks/evacuate.lua hostA --yes      # from cron
--
-- Ends with an error (and vmig's exit code for it) when a VM did not move;
-- the VMs that did not move keep running where they were.

local host = ...
if host == nil then
  error({ code = "invalid", message = "usage: vmig run runbooks/evacuate.lua HOST" })
end
vmig.host(host) -- a host that is not in the inventory, or down, ends the run here

-- Free memory of the hosts that can take VMs.
local free = {}
for _, h in ipairs(vmig.hosts()) do
  if h.name ~= host and h.reachable then
    free[h.name] = h.memory_available_bytes
  end
end
if next(free) == nil then
  error({ code = "failed", message = "no other reachable host to move the VMs of " .. host .. " to" })
end

-- The biggest VMs first, so that they find room.
local vms = vmig.vms({ host = host })
table.sort(vms, function(a, b) return a.memory_bytes > b.memory_bytes end)

local moves = {}
for _, vm in ipairs(vms) do
  if vm.state ~= "running" then
    vmig.log.warn(vm.name .. " is " .. vm.state .. ", not running: it stays on " .. host)
  else
    local best
    for name, bytes in pairs(free) do
      if bytes >= vm.memory_bytes and (best == nil or bytes > free[best] or (bytes == free[best] and name < best)) then
        best = name
      end
    end
    if best == nil then
      vmig.log.error("no host has room for " .. vm.name .. ": it stays on " .. host)
    else
      free[best] = free[best] - vm.memory_bytes
      table.insert(moves, { vm = vm.name, host = best })
    end
  end
end

if #moves == 0 then
  vmig.log.info("nothing to move off " .. host)
  return
end
vmig.log.info(string.format("moving %d VM(s) off %s", #moves, host))

local failed = {}
for _, result in ipairs(vmig.parallel(moves, { max = 2 })) do
  if not result.ok then
    table.insert(failed, result)
  end
end

if #failed > 0 then
  local names = {}
  for _, f in ipairs(failed) do
    table.insert(names, f.vm)
  end
  -- The first failure's code is the run's (and its exit code).
  local first = failed[1].error
  error({
    code = first.code,
    message = string.format(
      "%d of %d VMs did not move off %s: %s (%s: %s)",
      #failed, #moves, host, table.concat(names, ", "), first.vm or "?", first.message
    ),
    host = host,
  })
end
vmig.log.info(host .. " has no running VMs left")
