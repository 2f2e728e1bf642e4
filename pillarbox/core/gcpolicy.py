"""How the long-running server uses CPython's cyclic garbage collector.

The cyclic collector only frees reference cycles (everything else is freed by reference
counting the moment it is dropped), but a collection of the oldest generation walks every
tracked container in the process. With the default thresholds (700, 10, 10) a big command
that makes tens of thousands of short-lived containers (a 50,000-message SORT or FETCH: rows,
keys, response pieces) sets off a full collection every few thousand survivors, each walking
the whole heap: measured on a 50,000-message mailbox, a dozen or more full collections of
50-160 ms of CPU during one SORT, and one after it that the next command of any session
waited for (the 30-50 ms "first command after a big SORT", docs/BENCHMARKS.md).

So, once the server has started:

- :func:`gc.freeze` moves everything alive then (modules, classes, functions, the
  configuration, the listeners: ~50,000 objects that live as long as the process) into the
  permanent generation, which no collection walks again;
- the youngest generation is collected every ``YOUNG_THRESHOLD`` allocations instead of 700,
  so the containers of one command mostly die of reference counting before a collection
  ever sees them (each young collection stays around a millisecond), and the older ones as
  in CPython's defaults relative to that.

Memory held by cycles waits a little longer for its collection; nothing else changes.
"""

from __future__ import annotations

import gc
from typing import Final

YOUNG_THRESHOLD: Final = 20_000  # allocations minus deallocations between young collections
MIDDLE_THRESHOLD: Final = 10  # young collections per middle one (CPython's default)
OLD_THRESHOLD: Final = 10  # middle collections per full one, 25% growth rule aside (default)


def settle_after_start() -> None:
    """Collect what start-up left, freeze the survivors, and set the thresholds above.
    Called once, when every listener is up."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
