"""The planner's word check: every word a plan writes is an English word (or one of the query's).

A small quantised model decoded greedily sometimes puts most of its probability on a sub-word piece that does
not continue the word it is in: after `` The`` the default director gave ``ut`` 0.74 (``UT`` 0.14, `` warm``
0.08) in a pad thai caption, and the pieces that followed spelled ``Theutfumigatonglun``; nothing in its training
text holds such a word. :class:`WordCheck` lets the planner refuse a token that would leave a finished word that
is not in the lexicon, or an unfinished one that no lexicon word starts with; the planner then takes the next
likeliest token (greedy) or draws again (sampling).

The lexicon (``director/lexicon/english.txt.gz``, built by ``scripts/build_lexicon.py``): the 100,000 most frequent
English words of wordfreq 3.1.1 made of letters (R. Speer; word-frequency data CC-BY-SA 4.0, so this derived list is
too), plus the words of the default director's training texts that wordfreq knows (their typos stay out);
~94,000 words. The words of the query and of the
steps a plan keeps are accepted too, so a dish name the list lacks can be written.
"""

from __future__ import annotations

import bisect
import functools
import gzip
import re
from collections.abc import Iterable
from pathlib import Path

LEXICON = Path(__file__).parent / "lexicon" / "english.txt.gz"
_LETTERS = re.compile(r"[A-Za-z]+")
_TAIL = re.compile(r"[A-Za-z]*$")


@functools.cache
def load_lexicon(path: Path = LEXICON) -> tuple[str, ...]:
    """The lexicon's words, lowercase and sorted."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(sorted({w.strip() for w in f if w.strip()}))


class WordCheck:
    """Whether text may go on with a given piece: finished words must be words, the unfinished one a prefix."""

    def __init__(self, extra: Iterable[str] = (), lexicon: tuple[str, ...] | None = None) -> None:
        self.words = lexicon if lexicon is not None else load_lexicon()
        self.extra = sorted({w.lower() for text in extra for w in _LETTERS.findall(text)})

    def is_word(self, word: str) -> bool:
        w = word.lower()
        return len(w) == 1 or self._has(self.words, w, prefix=False) or self._has(self.extra, w, prefix=False)

    def is_prefix(self, part: str) -> bool:
        p = part.lower()
        return self._has(self.words, p, prefix=True) or self._has(self.extra, p, prefix=True)

    @staticmethod
    def _has(sorted_words, w: str, prefix: bool) -> bool:
        i = bisect.bisect_left(sorted_words, w)
        if i == len(sorted_words):
            return False
        return sorted_words[i].startswith(w) if prefix else sorted_words[i] == w

    def allows(self, text: str, piece: str) -> bool:
        """Whether ``text + piece`` keeps every word whole and real: each word ``piece`` finishes is a word, and
        a word still open at the end is the start of one. Only the words ``piece`` touches are checked."""
        s = _TAIL.search(text).group() + piece
        words = _LETTERS.findall(s)
        if not words:
            return True
        finished = words if not s[-1].isalpha() else words[:-1]
        if any(not self.is_word(w) for w in finished):
            return False
        return not s[-1].isalpha() or self.is_prefix(words[-1])
