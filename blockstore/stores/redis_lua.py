"""Lua scripts that RedisStore runs atomically on the server."""

from __future__ import annotations

__all__ = ["SWEEP"]

# Mark and sweep in one atomic step.  ARGV: prefix, "1" for a dry run, then the candidate digests
# (none: every digest in <prefix>packs).  Marks every 64-hex string in any field of any task hash.
# Returns {tasks, kept, digest1, size1, digest2, size2, ...} for the packs it deleted.
SWEEP = """
local prefix, dry = ARGV[1], ARGV[2] == "1"
local marked, ntasks = {}, 0
for _, tid in ipairs(redis.call("SMEMBERS", prefix .. "tasks")) do
  ntasks = ntasks + 1
  local ok, vals = pcall(redis.call, "HVALS", prefix .. "task:" .. tid)
  if ok then
    for _, v in ipairs(vals) do
      for m in string.gmatch(v, "%x+") do
        if #m == 64 then marked[string.lower(m)] = true end
      end
    end
  end
end
local pool = {}
if #ARGV > 2 then
  for i = 3, #ARGV do pool[#pool + 1] = ARGV[i] end
else
  pool = redis.call("SMEMBERS", prefix .. "packs")
end
local out, kept = {}, redis.call("SCARD", prefix .. "packs")
for _, sha in ipairs(pool) do
  local key = prefix .. "pack:" .. sha
  if not marked[sha] and redis.call("EXISTS", key) == 1 then
    local ok, size = pcall(redis.call, "STRLEN", key)
    out[#out + 1] = sha
    out[#out + 1] = ok and size or 0
    kept = kept - 1
    if not dry then
      redis.call("DEL", key)
      redis.call("SREM", prefix .. "packs", sha)
      redis.call("HDEL", prefix .. "corrupt", sha)
    end
  elseif not dry and redis.call("EXISTS", key) == 0 then
    redis.call("SREM", prefix .. "packs", sha)
    redis.call("HDEL", prefix .. "corrupt", sha)
  end
end
table.insert(out, 1, kept)
table.insert(out, 1, ntasks)
return out
"""
