-- Argo CD health check for openaperture.io/MessagingExchange.
--
-- Ready describes the monitor (spec valid, broker consumed, Manager reachable), not the fleet:
-- workers going inactive or offline (WorkersHealthy=False) leave the resource Healthy, so a
-- fleet problem never blocks a sync. Only a configuration error a human must fix (Stalled=True,
-- or Ready=False with a configuration reason) is Degraded; transient outages are Progressing
-- while the operator retries.
local CONFIGURATION_REASONS = {
  InvalidSpec = true,
  SecretNotFound = true,
  SecretForbidden = true,
  InvalidBrokerUrl = true,
  ManagerUnauthorized = true,
  QueueNotFound = true,
}

local function condition(status, conditionType)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function explain(c, fallback)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local function count(workers, state)
  if workers == nil or workers[state] == nil then
    return 0
  end
  return workers[state]
end

local hs = {}

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Deleting: waiting for the operator to release its finalizer"
  return hs
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the operator to observe generation %d", generation)
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = explain(stalled, "Stalled")
  return hs
end

local ready = condition(status, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = string.format("%d active, %d inactive, %d offline", count(status.workers, "active"),
    count(status.workers, "inactive"), count(status.workers, "offline"))
  return hs
end

if ready.status == "False" and CONFIGURATION_REASONS[ready.reason] then
  hs.status = "Degraded"
  hs.message = explain(ready, "Not ready")
  return hs
end

hs.status = "Progressing"
hs.message = explain(ready, "Waiting for the operator")
return hs
