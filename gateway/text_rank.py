"""Full-text ranking at query time: words, BM25 and reciprocal-rank fusion.

Pure functions, no I/O. The Qdrant Edge adapter keeps an *unscored* text
index on ``content`` (it answers "which memories contain these words"), and
ranks the matches here. A scoring (BM25) index made every update of an
existing memory pay for its statistics, and more so as the store grew
(measured: a batch of 50 updates 5.3 → 10.4 ms from 60,000 to 180,000
memories with it, ~3 ms flat without); ranking the few candidates of one
query costs far less than that on every write.

The corpus a score is relative to is the query's own scope (its tenant and
filters), not the whole shard: one tenant's vocabulary does not move another
tenant's ranking.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["BM25_B", "BM25_K1", "Corpus", "bm25", "mean_length", "query_terms", "rrf", "words"]

BM25_K1 = 1.2
BM25_B = 0.75
MAX_QUERY_TERMS = 32

# Qdrant's word tokenizer splits on every character that is not alphanumeric
# (so an underscore separates words too) and the index lowercases.
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """The lowercased words of ``text``, as the ``content`` index splits them."""
    return _WORD.findall(text.lower())


def query_terms(text: str) -> list[str]:
    """A query's distinct words in first-seen order (at most :data:`MAX_QUERY_TERMS`)."""
    return list(dict.fromkeys(words(text)))[:MAX_QUERY_TERMS]


@dataclass(frozen=True, slots=True)
class Corpus:
    """What BM25 needs to know of the documents in scope.

    ``documents`` is how many there are, ``frequency`` in how many of them
    each term occurs (from the index), ``mean_length`` their mean length in
    words.
    """

    documents: int
    frequency: Mapping[str, int]
    mean_length: float

    def idf(self, term: str) -> float:
        """Okapi BM25's inverse document frequency, floored at zero by the ``+ 1``."""
        n = max(self.documents, 1)
        df = min(self.frequency.get(term, 0), n)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


def bm25(
    terms: Sequence[str],
    documents: Mapping[str, str],
    corpus: Corpus,
    *,
    k1: float = BM25_K1,
    b: float = BM25_B,
) -> list[tuple[str, float]]:
    """``(id, score)`` of every document matching a term, best first.

    Ties go in id order, so a ranking is deterministic.
    """
    if not terms:
        return []
    idf = {term: corpus.idf(term) for term in terms}
    mean = corpus.mean_length if corpus.mean_length > 0 else 1.0
    scored: list[tuple[str, float]] = []
    for doc_id, content in documents.items():
        tokens = words(content)
        counts = Counter(tokens)
        norm = k1 * (1.0 - b + b * len(tokens) / mean)
        score = 0.0
        for term in terms:
            tf = counts.get(term, 0)
            if tf:
                score += idf[term] * tf * (k1 + 1.0) / (tf + norm)
        if score > 0.0:
            scored.append((doc_id, score))
    scored.sort(key=lambda kv: (-kv[1], kv[0]))
    return scored


def mean_length(contents: Iterable[str]) -> float:
    """The mean length in words of some documents (0 when there are none)."""
    lengths = [len(words(c)) for c in contents]
    return sum(lengths) / len(lengths) if lengths else 0.0


def rrf(rankings: Sequence[Sequence[str]], k: int = 60) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion: ``sum 1 / (k + rank)`` over rankings (rank from 1), best first."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, start=1):
            fused[doc_id] = fused.get(doc_id, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
