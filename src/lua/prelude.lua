-- The Lua side of the `vmig` module. The functions written in Rust (`raw`)
-- never raise for an operator error: they return nil and an error table.
-- Here each becomes the raising function the runbook calls, and the error
-- tables become error values with fields that `pcall` can inspect
-- (docs/lua.md, "Errors").
local raw, names = ...

local Error = {}
Error.__index = Error
Error.__name = "vmig.error"
Error.__tostring = function(e)
  return e.code .. ": " .. e.message
end

local function error_value(e)
  return setmetatable(e, Error)
end

local function raising(f)
  return function(...)
    local result, e = f(...)
    if e ~= nil then
      error(error_value(e), 2)
    end
    return result
  end
end

local vmig = {}
for _, name in ipairs(names) do
  vmig[name] = raising(raw[name])
end

-- parallel: each failed item's error is an error value too.
local parallel = vmig.parallel
vmig.parallel = function(...)
  local results = parallel(...)
  for _, r in ipairs(results) do
    if r.error ~= nil then
      error_value(r.error)
    end
  end
  return results
end

vmig.log = {
  info = raising(raw.log_info),
  warn = raising(raw.log_warn),
  error = raising(raw.log_error),
}

-- The non-raising form: the function's results, or nil and the error value
-- (a script's own errors become error values with code "script").
function vmig.try(f, ...)
  local results = table.pack(pcall(f, ...))
  if results[1] then
    return table.unpack(results, 2, results.n)
  end
  local e = results[2]
  if getmetatable(e) ~= Error then
    e = error_value({ code = "script", message = tostring(e), retryable = false })
  end
  return nil, e
end

function vmig.is_error(value)
  return getmetatable(value) == Error
end

vmig.args = raw.args
vmig.run_id = raw.run_id
vmig.dry_run = raw.dry_run

-- A name vmig does not have is an error, not a nil to call later.
setmetatable(vmig, {
  __index = function(_, name)
    error(error_value({
      code = "invalid",
      message = "vmig has no field " .. tostring(name) .. " (docs/lua.md lists them)",
      retryable = false,
    }), 2)
  end,
  __newindex = function(_, name)
    error(error_value({
      code = "invalid",
      message = "vmig." .. tostring(name) .. " cannot be set",
      retryable = false,
    }), 2)
  end,
})

-- Ctrl-C cannot be caught: once the run is interrupted, pcall, xpcall and
-- coroutine.resume pass the error on instead of returning it.
local interrupted = raw.interrupted
local function passing_interrupts(protected)
  return function(...)
    local results = table.pack(protected(...))
    if not results[1] and interrupted() then
      error(results[2], 0)
    end
    return table.unpack(results, 1, results.n)
  end
end
pcall = passing_interrupts(pcall)
xpcall = passing_interrupts(xpcall)
coroutine.resume = passing_interrupts(coroutine.resume)

-- print goes to the log, above the bars, never into the JSON lines.
print = function(...)
  local parts = table.pack(...)
  for i = 1, parts.n do
    parts[i] = tostring(parts[i])
  end
  vmig.log.info(table.concat(parts, "\t", 1, parts.n))
end

-- Reading a global that was never set is a mistake (a typo, most often).
setmetatable(_G, {
  __index = function(_, name)
    error(error_value({
      code = "script",
      message = "unknown global " .. tostring(name),
      retryable = false,
    }), 2)
  end,
})

return vmig
