"""The neutral SEARCH filter a protocol hands the store to push down to its database.

Every match of the SEARCH program must pass the filter; it may let more through, and the
protocol re-checks those. A filter is a tuple tree:

* ``("all",)``  ``("mask", bit, present)``  ``("keyword", name, present)``
* ``("larger", n)``  ``("smaller", n)``
* ``("date", "before"|"on"|"since", ordinal)`` internal date, UTC day (proleptic ordinal)
* ``("sent", op, ordinal)`` the Date: field; ``("idate", ">"|"<=", epoch)``
* ``("modseq", n)``  ``("uids", [(lo, hi), ...])``
* ``("header", field, value)`` case-folded substring of the header text
* ``("text", "body"|"text", needle)`` case-folded needle of >= 3 characters in the full-text
  index (body text, or body or header text); messages not indexed yet pass too, so it is
  exact only when ``full_text_pending`` said 0
* ``("and", [nodes])``  ``("or", a, b)``  ``("not", a)``
"""

from __future__ import annotations

from typing import TypeAlias

SearchFilter: TypeAlias = tuple[object, ...]
ALL: SearchFilter = ("all",)
