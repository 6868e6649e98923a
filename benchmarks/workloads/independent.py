"""independent: N trivial tasks with no dependencies, ``inc(i)``.

A jugfile for both engines: ``BENCH_ENGINE=jug`` imports jug's TaskGenerator, anything else
ajug's. ``BENCH_N`` sets N (default 20,000). The scale workload is this file with N = 1M.
"""

import os

if os.environ.get("BENCH_ENGINE") == "jug":
    from jug import TaskGenerator
else:
    from ajug import TaskGenerator

N = int(os.environ.get("BENCH_N", "20000"))


@TaskGenerator
def inc(i):
    return i + 1


results = [inc(i) for i in range(N)]
