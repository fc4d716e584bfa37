"""Query-time BM25 and RRF (gateway.text_rank)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.text_rank import Corpus, bm25, mean_length, query_terms, rrf, words


def test_words_split_like_the_index_and_lowercase() -> None:
    assert words("The quick-witted FOX_cub, Straße 42!") == [
        "the", "quick", "witted", "fox", "cub", "straße", "42",
    ]  # fmt: skip
    assert query_terms("tea Tea green tea") == ["tea", "green"]
    assert query_terms(" ".join(f"w{i}" for i in range(100))) == [f"w{i}" for i in range(32)]


def test_rare_terms_weigh_more_and_repeats_saturate() -> None:
    corpus = Corpus(documents=100, frequency={"tea": 50, "matcha": 2}, mean_length=4.0)
    assert corpus.idf("matcha") > corpus.idf("tea") > 0
    docs = {"a": "tea tea tea tea", "b": "matcha with milk", "c": "coffee only"}
    ranked = bm25(["tea", "matcha"], docs, corpus)
    assert [d for d, _ in ranked] == ["b", "a"]  # c matches nothing: not returned
    once = bm25(["tea"], {"x": "tea a b c"}, corpus)[0][1]
    four = bm25(["tea"], {"x": "tea tea tea tea"}, corpus)[0][1]
    assert once < four < once * (1.2 + 1)  # bounded by k1 + 1


def test_shorter_documents_rank_higher_for_the_same_count() -> None:
    corpus = Corpus(documents=10, frequency={"tea": 2}, mean_length=6.0)
    ranked = bm25(["tea"], {"long": "tea " + "x " * 20, "short": "tea x"}, corpus)
    assert [d for d, _ in ranked] == ["short", "long"]


def test_idf_is_never_negative_even_with_stale_frequencies() -> None:
    assert Corpus(documents=3, frequency={"t": 10}, mean_length=1.0).idf("t") >= 0
    assert Corpus(documents=0, frequency={}, mean_length=0.0).idf("t") > 0


def test_rrf_sums_reciprocal_ranks() -> None:
    fused = rrf([["a", "b"], ["b", "c"]], k=60)
    assert fused[0][0] == "b"
    assert dict(fused)["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert dict(fused)["c"] == pytest.approx(1 / 62)
    assert rrf([]) == []


def test_mean_length() -> None:
    assert mean_length(["a b", "c d e f"]) == 3.0
    assert mean_length([]) == 0.0


_word = st.sampled_from(["tea", "green", "coffee", "milk", "x", "y"])
_doc = st.lists(_word, max_size=12).map(" ".join)


@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=4), _doc, max_size=20),
       st.lists(_word, min_size=1, max_size=3, unique=True))  # fmt: skip
def test_a_ranking_is_sorted_deterministic_and_holds_exactly_the_matches(
    docs: dict[str, str], terms: list[str]
) -> None:
    freq = {t: sum(t in words(d) for d in docs.values()) for t in terms}
    corpus = Corpus(len(docs), freq, mean_length(docs.values()))
    ranked = bm25(terms, docs, corpus)
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    assert all(math.isfinite(s) and s > 0 for s in scores)
    assert {d for d, _ in ranked} == {d for d, c in docs.items() if set(terms) & set(words(c))}
    assert bm25(terms, dict(reversed(list(docs.items()))), corpus) == ranked
