-- Evens out free memory across the cluster: moves the smallest VM that
-- helps from the host with the least free memory to the one with the most,
-- while that narrows the gap, at most MAX moves (default 2).
--
--   vmig run runbooks/rebalance.lua [MAX] [--dry-run] [--yes]

local max = tonumber((...) or "2")
if max == nil or max < 1 then
  error({ code = "invalid", message = "usage: vmig run runbooks/rebalance.lua [MAX]" })
end

local free = {}
for _, h in ipairs(vmig.hosts()) do
  if h.reachable then
    free[h.name] = h.memory_available_bytes
  else
    vmig.log.warn(h.name .. " is unreachable: left out")
  end
end

local function extremes()
  local low, high
  for name, bytes in pairs(free) do
    if low == nil or bytes < free[low] or (bytes == free[low] and name < low) then low = name end
    if high == nil or bytes > free[high] or (bytes == free[high] and name < high) then high = name end
  end
  return low, high
end

local moved = 0
while moved < max do
  local low, high = extremes()
  if low == nil or low == high then break end
  local gap = free[high] - free[low]
  -- Moving a VM of size s narrows the gap only if s < gap.
  local pick
  for _, vm in ipairs(vmig.vms({ host = low, state = "running" })) do
    if vm.memory_bytes < gap and (pick == nil or vm.memory_bytes < pick.memory_bytes) then
      pick = vm
    end
  end
  if pick == nil then break end
  vmig.log.info(string.format("%s: %d MiB free, %s: %d MiB free; moving %s", low, free[low] >> 20, high, free[high] >> 20, pick.name))
  vmig.migrate(pick.name, high)
  free[low] = free[low] + pick.memory_bytes
  free[high] = free[high] - pick.memory_bytes
  moved = moved + 1
  if vmig.dry_run then
    -- Nothing moved: the agents' figures would not show the planned move.
    vmig.log.info("(dry run: later steps are planned from the planned figures)")
  end
end
vmig.log.info(string.format("%d move(s)", moved))
