"""Map-reduce with a barrier: the inputs are known only after the first task has run."""

from ajug import TaskGenerator, barrier, bvalue


@TaskGenerator
def make_inputs(n):
    return list(range(n))


@TaskGenerator
def square(x):
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
