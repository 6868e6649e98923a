"""The redis store's chunk manifest, and its Lua scripts: each batch of a thousand keys is one call (packing a
thousand commands in Python costs more than asking redis)."""

from __future__ import annotations

from typing import Any

import msgpack

#: exists/intact/metadata/remove and the failure records send this many keys per round trip.
BATCH_KEYS = 1000
MANIFEST_MAGIC = b"AJCM"
#: Bytes of ``{ns}r:{key}`` read to recognise and parse a manifest (they are ~50 bytes).
MANIFEST_PEEK_BYTES = 256

#: KEYS: result and metadata key of each result, in pairs; ARGV: value and metadata, in pairs.
#: Returns, per result, the first bytes of the value it replaced (to find old chunks) or false.
SAVE_BATCH_LUA = """
local out = {}
for i = 1, #KEYS, 2 do
  local old = redis.call('GETRANGE', KEYS[i], 0, PEEK_END)
  redis.call('SET', KEYS[i], ARGV[i])
  redis.call('SET', KEYS[i + 1], ARGV[i + 1])
  if old == '' then out[#out + 1] = false else out[#out + 1] = old end
end
return out
""".replace("PEEK_END", str(MANIFEST_PEEK_BYTES - 1))


#: KEYS: result keys. Returns 1 or 0 per key.
EXISTS_BATCH_LUA = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('EXISTS', KEYS[i]) end
return out
"""


#: KEYS: result and metadata key of each result, in pairs. Per result: its length if it is
#: there, starts as a result or a manifest does, and its length (or its manifest's) is the size
#: its metadata states; else -1 (missing, cut short or overwritten).
INTACT_BATCH_LUA = """
local out = {}
for i = 1, #KEYS, 2 do
  local head = redis.call('GETRANGE', KEYS[i], 0, 3)
  local ok = -1
  if head == 'AJUG' or head == 'AJCM' then
    local len
    if head == 'AJCM' then
      local g, man = pcall(cmsgpack.unpack, string.sub(redis.call('GET', KEYS[i]), 5))
      len = (g and type(man) == 'table' and type(man['len']) == 'number' and man['len']) or -1
    else
      len = redis.call('STRLEN', KEYS[i])
    end
    ok = len
    local m = redis.call('GET', KEYS[i + 1])
    local good, meta = false, nil
    if m then good, meta = pcall(cmsgpack.unpack, m) end
    if good and type(meta) == 'table' and type(meta['size']) == 'number'
        and len ~= meta['size'] then ok = -1 end
  end
  out[#out + 1] = ok
end
return out
"""


def manifest(data: bytes | None) -> dict[str, Any] | None:
    if not data or not data.startswith(MANIFEST_MAGIC):
        return None
    try:
        m = msgpack.unpackb(data[len(MANIFEST_MAGIC) :], raw=False)
        return {"u": str(m["u"]), "n": int(m["n"]), "len": int(m["len"])}
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        return None
