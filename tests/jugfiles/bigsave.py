"""One task with a big result (slow to write) and one that uses it: for killing a worker while
it writes."""

import os

from ajug import TaskGenerator

MIB = int(os.environ.get("AJUG_TEST_BIG_MIB", "300"))


@TaskGenerator
def big(mib):
    return b"\x07" * (mib * 1024 * 1024)


@TaskGenerator
def summary(blob):
    return [len(blob), blob[0], blob[-1]]


data = big(MIB)
result = summary(data)
