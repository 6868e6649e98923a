"""Word counts with a barrier: the number of chunks is known only after the first task runs.

    ajug run examples/wordcount_barrier.py

`bvalue(chunks)` stops loading the jugfile until `split_text` is done; the coordinator then loads
the jugfile again, past the barrier, and serves the per-chunk tasks. Workers notice nothing.
"""

from collections import Counter

from ajug import TaskGenerator, bvalue
from ajug.mapreduce import mapreduce

TEXT = (
    "the quick brown fox jumps over the lazy dog and the dog sleeps while the fox runs "
    "far away into the quiet woods where no dog can follow the quick fox "
) * 200


@TaskGenerator
def split_text(text, words_per_chunk):
    words = text.split()
    return [" ".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]


def count_words(chunk):
    return Counter(chunk.split())


def merge(a, b):
    return a + b


@TaskGenerator
def top(counts, n):
    return counts.most_common(n)


chunks = bvalue(split_text(TEXT, 250))
counts = mapreduce(merge, count_words, chunks, map_step=4, reduce_step=4)
best = top(counts, 5)
