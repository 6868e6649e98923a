"""bulk: N tasks each returning a numpy array of BENCH_MIB MiB (store bandwidth).

``BENCH_N`` (default 1,000), ``BENCH_MIB`` (default 1). Task i returns float64 values all
equal to i, so a result can be checked without keeping a copy.
"""

import os

if os.environ.get("BENCH_ENGINE") == "jug":
    from jug import TaskGenerator
else:
    from ajug import TaskGenerator

N = int(os.environ.get("BENCH_N", "1000"))
MIB = float(os.environ.get("BENCH_MIB", "1"))


@TaskGenerator
def block(i, n):
    import numpy as np

    return np.full(n, i, dtype=np.float64)


ITEMS = int(MIB * (1 << 20)) // 8
arrays = [block(i, ITEMS) for i in range(N)]
