"""Count the primes below 20,000 and sum them: the first jugfile to run.

    ajug run examples/primes.py          # computes, in parallel, on this machine
    ajug run examples/primes.py          # again: nothing to compute, results are reused
    ajug status examples/primes.py       # what is done, from the store

Each call of a TaskGenerator function is a task; results are kept in
examples/primes.ajugdata/ and reused by every later run.
"""

from ajug import TaskGenerator

LIMIT = 20_000
BLOCK = 500


@TaskGenerator
def primes_in(start, stop):
    """The primes in [start, stop), by trial division (slow on purpose: it is the work)."""
    found = []
    for n in range(max(start, 2), stop):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            found.append(n)
    return found


@TaskGenerator
def count_and_sum(blocks):
    return {"count": sum(len(b) for b in blocks), "sum": sum(sum(b) for b in blocks)}


@TaskGenerator
def report(totals):
    return f"{totals['count']} primes below {LIMIT}, summing to {totals['sum']}"


blocks = [primes_in(i, i + BLOCK) for i in range(0, LIMIT, BLOCK)]
totals = count_and_sum(blocks)
summary = report(totals)
