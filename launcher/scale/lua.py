"""The server side of the shared rate limit: one Lua script, run atomically by Redis.

Every reservation of every launcher on a limit key is one EVALSHA of
`RESERVE`. The script keeps the whole shared state in one hash (so it works
on a Redis Cluster too) and uses only Redis `TIME`, never a launcher's clock:

- `tat`: the GCRA theoretical arrival time of the next slot (seconds);
- `gen`: the generation: Redis TIME in µs when the hash was created, plus one
  per cut, so it only grows, even across a Redis restart or the key expiring;
- `cut`, `lmax`, `win`: the shared CUBIC curve: time of the last cut, W_max
  and K (absent: never cut);
- `sent`: grants since the last cut (the fleet's `_episode_sent`);
- `mfirst`, `mlast`, `mstart`, `mcount`, `mtotal`, `msmooth`: a `RateMeter`
  over the grants of the whole fleet, counted at their send times.

The meter differs from `RateMeter` in two ways, both about its first half
second. Its first measurement spans a whole bucket from the first grant on:
`RateMeter` closes its first bucket at the first bucket boundary, so a launch
that begins 50 ms before one reads as a tenth of its rate for half a second,
and a cut then (the first 429s arrive within milliseconds) lands far too low.
And its early estimate divides by the span of the grants' send times, which
run ahead of `now` while claims queue.

The Python constants (C, the floor, the meter's bucket and smoothing) are
passed in ARGV, so `launcher.flow.adaptive` stays their single source.
"""

from __future__ import annotations

import hashlib

__all__ = ["RESERVE", "RESERVE_SHA1"]

RESERVE = r"""
-- KEYS[1]: the limit's hash.
-- ARGV: 1 ceiling (requests/s, 0 = none), 2 burst, 3 C, 4 floor (requests/s),
--       5 meter bucket (s), 6 meter smoothing, 7 generation a cut is based on (-1: no cut),
--       8 the cut's W_max, 9 the cut's K (s), 10 key TTL (ms).
-- Returns strings: delay (s), generation, rate applied (0 = none), fleet send rate,
--                  curve (0 = never cut), W_max, K, seconds since the cut (-1: never), sent.
if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 5: TIME, then writes

local key = KEYS[1]
local ceiling = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local scale = tonumber(ARGV[3])
local floor_rate = tonumber(ARGV[4])
local bucket = tonumber(ARGV[5])
local smooth = tonumber(ARGV[6])
local cut_base = tonumber(ARGV[7])

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local s = redis.call('HMGET', key, 'gen', 'tat', 'cut', 'lmax', 'win', 'sent',
                     'mfirst', 'mstart', 'mcount', 'mtotal', 'msmooth', 'mlast')
local gen = tonumber(s[1]) or (tonumber(clock[1]) * 1000000 + tonumber(clock[2]))
local tat = tonumber(s[2]) or now
local cut = tonumber(s[3])
local lmax = tonumber(s[4]) or 0
local win = tonumber(s[5]) or 0
local sent = tonumber(s[6]) or 0
local mfirst = tonumber(s[7]) or -1
local mstart = tonumber(s[8]) or -1
local mcount = tonumber(s[9]) or 0
local mtotal = tonumber(s[10]) or 0
local msmooth = tonumber(s[11]) or 0
local mlast = tonumber(s[12]) or -1

-- A cut counts only if no other launcher's cut answered the same episode first.
if cut_base >= 0 and cut_base == gen then
  gen = gen + 1
  cut = now
  lmax = tonumber(ARGV[8])
  win = tonumber(ARGV[9])
  sent = 0
  if tat > now then tat = now end  -- slots claimed at the old rate are forgotten
end

-- RateMeter.rate_at(now), over the grants of every launcher.
local measured = msmooth
if measured <= 0 then
  measured = 0
  local span = math.max(now, mlast) - mfirst
  if mfirst >= 0 and mtotal >= 2 and span > 0 then measured = mtotal / span end
end

-- AdaptiveRate._climb: the CUBIC curve since the cut, at most twice what is being sent.
local curve = 0
local rate = ceiling
if cut then
  local cubic = scale * (now - cut - win) ^ 3 + lmax
  if measured > 0 and 2 * measured < cubic then cubic = 2 * measured end
  curve = math.max(floor_rate, cubic)
  if ceiling <= 0 or curve < ceiling then rate = curve end
end

-- GCRA (launcher.flow.pacing.TokenBucket.reserve) on Redis TIME.
local send_at = now
if rate > 0 then
  local interval = 1 / rate
  send_at = math.max(now, tat - (burst - 1) * interval)
  tat = math.max(tat, now) + interval
end
sent = sent + 1

-- RateMeter.add(send_at), its first measurement over a whole bucket (see above).
local b = math.floor(send_at / bucket) * bucket
if mfirst < 0 then
  mfirst = send_at
  mstart = b
end
if send_at > mlast then mlast = send_at end
mcount = mcount + 1
mtotal = mtotal + 1
if b > mstart then
  if msmooth > 0 then
    msmooth = (mcount / (b - mstart)) * smooth + msmooth * (1 - smooth)
    mcount = 0
    mstart = b
  elseif b - mfirst >= bucket then
    msmooth = mcount / (b - mfirst)
    mcount = 0
    mstart = b
  end
end

local function str(x) return string.format('%.17g', x) end
local fields = {'gen', str(gen), 'tat', str(tat), 'sent', str(sent),
                'mfirst', str(mfirst), 'mstart', str(mstart), 'mcount', str(mcount),
                'mtotal', str(mtotal), 'msmooth', str(msmooth), 'mlast', str(mlast)}
if cut then
  for _, v in ipairs({'cut', str(cut), 'lmax', str(lmax), 'win', str(win)}) do
    fields[#fields + 1] = v
  end
end
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, ARGV[10])

local since = -1
if cut then since = now - cut end
return {str(send_at - now), str(gen), str(rate), str(measured), str(curve),
        str(lmax), str(win), str(since), str(sent)}
"""

# EVALSHA names the script by this digest; EVAL is the fallback when Redis lacks it.
RESERVE_SHA1 = hashlib.sha1(RESERVE.encode(), usedforsecurity=False).hexdigest()
