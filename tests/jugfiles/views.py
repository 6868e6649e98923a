"""Quick tasks of a function with a long name, then one slow reduce: for the progress views
(a function that finishes while the run goes on) and for status at 80 columns."""

import os
import time

from ajug import TaskGenerator

N = int(os.environ.get("AJUG_TEST_N", "60"))
STEP_S = float(os.environ.get("AJUG_TEST_STEP_S", "0.05"))
FINAL_S = float(os.environ.get("AJUG_TEST_FINAL_S", "0.05"))


@TaskGenerator
def split_into_chunks_of_words(i, seconds):
    time.sleep(seconds)
    return i


@TaskGenerator
def count_words_in_every_chunk(xs, seconds):
    time.sleep(seconds)
    return sum(xs)


parts = [split_into_chunks_of_words(i, STEP_S) for i in range(N)]
total = count_words_in_every_chunk(parts, FINAL_S)
