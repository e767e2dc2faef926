"""Id sources for the cores, which make no random numbers themselves.

A core that names things (group member ids, topic ids) is given an id source at
construction: a callable returning the next id. :func:`seeded_ids` derives ids from a
seed and a counter, so a test that passes a fixed seed gets the same ids every run, and a
shell that passes fresh random bytes at each process start gets ids that never repeat
across restarts.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

IdSource = Callable[[], str]


def seeded_ids(seed: bytes, hex_digits: int) -> IdSource:
    """Ids of ``hex_digits`` (even, at most 128) hex digits from ``seed`` and a counter."""
    if hex_digits % 2 or not 2 <= hex_digits <= 128:
        raise ValueError(f"hex_digits={hex_digits}: an even number from 2 to 128")
    counter = itertools.count()

    def next_id() -> str:
        data = seed + next(counter).to_bytes(8, "big")
        return hashlib.blake2b(data, digest_size=hex_digits // 2).hexdigest()

    return next_id
