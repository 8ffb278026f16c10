-- Rolling maintenance: one host after the other, cordon it, empty it,
-- run the operator's hook on it, uncordon it and bring its VMs back (by
-- rolling back that host's evacuation). The roll stops at the first host
-- that fails: its VMs stay where the evacuation put them, and it stays
-- cordoned, so the operator can look.
--
--   vmig run runbooks/rolling-maintenance.lua -- 'ssh {host} apt-get -y upgrade' hostA hostB hostC
--
-- The hook is split on spaces (no shell); `{host}` is replaced by the host's
-- name. Under --dry-run nothing is changed and each step is planned.

local hook = vmig.args[1]
if hook == nil or #vmig.args < 2 then
  error({ code = "invalid", message = "usage: vmig run runbooks/rolling-maintenance.lua HOOK HOST..." })
end
local hosts = {}
for i = 2, #vmig.args do
  local host = vmig.args[i]
  vmig.host(host) -- every host is checked before the first is touched
  table.insert(hosts, host)
end

local function command_for(host)
  local words = {}
  for word in string.gmatch(hook, "%S+") do
    table.insert(words, (string.gsub(word, "{host}", host)))
  end
  return words
end

for n, host in ipairs(hosts) do
  vmig.log.info(string.format("[%d/%d] %s: maintenance begins", n, #hosts, host))
  vmig.cordon(host, { reason = "rolling maintenance (run " .. vmig.run_id .. ")" })
  local away = vmig.evacuate(host)
  if not away.complete then
    error({ code = "partial", message = host .. " could not be emptied; the roll stops here", host = host })
  end
  local done = vmig.exec(command_for(host))
  if not done.dry_run and not done.ok then
    error({
      code = "failed",
      message = string.format("the hook failed on %s (status %s): %s", host, tostring(done.status), done.stderr or ""),
      host = host,
    })
  end
  vmig.uncordon(host)
  local back = vmig.rollback(away.run)
  if not back.complete then
    error({ code = "partial", message = "not every VM came back to " .. host, host = host })
  end
  vmig.log.info(string.format("[%d/%d] %s: done, its VMs are back", n, #hosts, host))
end
