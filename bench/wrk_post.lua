-- POST one of the JSON bodies in $WRK_BODIES (one per line), in turn.
local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do
  bodies[#bodies + 1] = line
end
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, bodies[(i % #bodies) + 1])
end
