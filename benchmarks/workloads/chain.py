"""chain: N tasks, each depending on the previous one (no parallelism at all).

Measures the latency from one task's end to its dependent's start. ``BENCH_N`` (default 2,000).
"""

import os

if os.environ.get("BENCH_ENGINE") == "jug":
    from jug import TaskGenerator
else:
    from ajug import TaskGenerator

N = int(os.environ.get("BENCH_N", "2000"))


@TaskGenerator
def inc(x):
    return x + 1


steps = [inc(0)]
for _ in range(N - 1):
    steps.append(inc(steps[-1]))
final = steps[-1]
