"""Text a user or a file gave, made safe to print and to write.

A query typed with ``\\x1b[31m`` or ``\\x07`` in it, or a hand-edited ``plan.json`` holding a NUL, must not reach a
terminal as control codes (a colour change, a bell, a cursor move) nor a file as bytes other tools choke on.
:func:`printable` removes the control characters (Unicode category Cc) of one line of text.
"""

from __future__ import annotations

import unicodedata

MAX_QUERY_CHARS = 1000  # a query is a sentence; a 100 KB one is a mistake (refused before any model loads)


def printable(text: str) -> str:
    """``text`` without control characters (C0, DEL, C1: Unicode category Cc); a newline or tab inside one
    line of text becomes a space."""
    out = []
    for ch in text:
        if ch in "\n\t\r":
            out.append(" ")
        elif unicodedata.category(ch) != "Cc":
            out.append(ch)
    return "".join(out)
