"""map-reduce: N maps feeding a tree of reduces, each reduce summing FANIN results.

``BENCH_N`` maps (default 10,000), ``BENCH_FANIN`` (default 10): 10,000 maps then
1,000 + 100 + 10 + 1 reduces, 11,111 tasks.
"""

import os

if os.environ.get("BENCH_ENGINE") == "jug":
    from jug import TaskGenerator
else:
    from ajug import TaskGenerator

N = int(os.environ.get("BENCH_N", "10000"))
FANIN = int(os.environ.get("BENCH_FANIN", "10"))


@TaskGenerator
def square(i):
    return i * i


@TaskGenerator
def add(xs):
    return sum(xs)


maps = [square(i) for i in range(N)]
level = maps
while len(level) > 1:
    level = [add(level[i : i + FANIN]) for i in range(0, len(level), FANIN)]
total = level[0]
