"""Load, double, sum, report: a small graph with fan-in, for the offline commands' tests."""

from ajug import TaskGenerator

N_ITEMS = 6


@TaskGenerator
def load(i):
    return i


@TaskGenerator
def double(x):
    return 2 * x


@TaskGenerator
def total(xs):
    return sum(xs)


@TaskGenerator
def report(t):
    return f"total={t}"


items = [load(i) for i in range(N_ITEMS)]
doubled = [double(x) for x in items]
tot = total(doubled)
summary = report(tot)
