"""Map-reduce with a barrier: the inputs are known only after the first task has run."""

import time

from ajug import TaskGenerator, barrier, bvalue


@TaskGenerator
def make_inputs(n):
    return list(range(n))


@TaskGenerator
def square(x):
    time.sleep(0.05)  # long enough for a worker started after the coordinator to join in
    return x * x


@TaskGenerator
def add_all(xs):
    return sum(xs)


@TaskGenerator
def describe(total, n):
    return {"n": n, "total": total}


inputs = bvalue(make_inputs(60))
squares = [square(x) for x in inputs]
partial = [add_all(squares[i : i + 10]) for i in range(0, len(squares), 10)]
total = add_all(partial)
barrier()
result = describe(total, len(inputs))
