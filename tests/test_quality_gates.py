"""builder.quality: embeddings offline, relevance, code checks, semantic dedup, diversity."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from builder.errors import LLMError
from builder.quality.codecheck import check_code, check_documents
from builder.quality.embed import EndpointEmbedder, WordLlamaEmbedder
from builder.quality.metrics import mean_similarity, node_diversity, vendi_score
from builder.quality.relevance import (
    add_relevance,
    relevance_scores,
    split_off_topic,
    unit_query,
)
from builder.quality.semdedup import removal_records, semantic_clusters
from builder.settings.llm import LLMSettings
from builder.settings.quality import EmbeddingSettings

KING = (
    "Once upon a time a king had three sons. The eldest wanted the throne, the second loved "
    "his horses and the youngest wandered the forest. One winter the king fell ill and sent "
    "his sons across the kingdom to find a healer."
)
ON_TOPIC = (
    "A dictionary maps keys to values: ages = {'ana': 31}. Look a key up with ages['ana']. A "
    "recursive function calls itself on a smaller input until it reaches its base case, like "
    "factorial(n) = n * factorial(n - 1)."
)
UNIT = {
    "topic_name": "Dictionaries and recursion",
    "description": "Python dictionaries and recursive functions",
    "session": "Dictionaries and recursion",
    "concepts": ["dict lookup", "base case", "recursive call"],
}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Any connection attempt outside 127.0.0.0/8 fails the test (and is recorded)."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guard(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else str(address)
        if isinstance(host, str) and (host.startswith("127.") or self.family == socket.AF_UNIX):
            return real_connect(self, address)
        attempts.append(address)
        raise AssertionError(f"network access attempted: {address!r}")

    def guard_dns(*args: object, **kwargs: object) -> object:
        attempts.append(args[0] if args else None)
        raise AssertionError(f"DNS lookup attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket, "getaddrinfo", guard_dns)
    monkeypatch.setattr(socket, "create_connection", guard_dns)
    return attempts


@pytest.fixture(scope="module")
def embedder() -> WordLlamaEmbedder:
    return WordLlamaEmbedder()


def test_wordllama_loads_and_embeds_without_network(no_network: list[object]) -> None:
    e = WordLlamaEmbedder()  # loads inside the guard: a download attempt would fail here
    vecs = e.embed([KING, ON_TOPIC, ""])
    assert vecs.shape == (3, 256) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs[:2], axis=1), 1.0, atol=1e-5)
    assert not vecs[2].any()  # an empty text is the zero vector
    assert no_network == []


def test_the_guard_catches_a_download(no_network: list[object]) -> None:
    """The guard is real: WordLlama's plain load (which downloads) is refused by it."""
    import requests

    with pytest.raises((AssertionError, requests.RequestException)):
        requests.get("https://huggingface.co/dleemiller/word-llama-l2-supercat", timeout=2)
    assert no_network


def test_fast_pooling_equals_wordllama_embed(embedder: WordLlamaEmbedder) -> None:
    from wordllama import WordLlama

    from builder.quality.embed import wordllama_dir

    ref = WordLlama.load(cache_dir=wordllama_dir(), disable_download=True)
    texts = [KING, ON_TOPIC, "short", "x " * 500]
    assert np.allclose(embedder.embed(texts), ref.embed(texts, norm=True), atol=1e-5)


def test_relevance_separates_the_king_story(embedder: WordLlamaEmbedder) -> None:
    frame = pl.DataFrame(
        {
            "id": ["king", "good", "orphan"],
            "text": [KING, ON_TOPIC, KING],
            "unit_id": ["u", "u", "?"],
        }
    )
    scored = add_relevance(frame, {"u": unit_query(UNIT)}, embedder)
    rel = dict(zip(scored["id"], scored["relevance"], strict=True))
    assert rel["king"] < 0.3 <= rel["good"]
    assert rel["orphan"] is None  # unknown unit: no score, kept
    kept, rejected = split_off_topic(scored, 0.3)
    assert kept["id"].to_list() == ["good", "orphan"]
    assert rejected["id"].to_list() == ["king"]
    assert rejected["reason"].to_list() == ["off_topic"]
    assert rejected["detail"][0].startswith(f"relevance {round(rel['king'], 3)} < min_relevance")
    kept_all, none = split_off_topic(scored, -1)
    assert kept_all.height == 3 and none.height == 0


LABELLED = Path(__file__).resolve().parent / "bench" / "relevance_units.json"


def test_the_default_min_relevance_is_the_measured_one(embedder: WordLlamaEmbedder) -> None:
    """bench/quality.py's rule on its labelled set (tests/bench/relevance_units.json): the
    default is the lowest threshold (0.05 steps) catching >= 95% of cross-discipline
    mismatches with <= 2% of on-topic documents dropped; it holds with the bundled model."""
    import json

    from builder.settings.filters import FilterSettings

    units = json.loads(LABELLED.read_text(encoding="utf-8"))
    by_id = {u["unit_id"]: u for u in units}
    texts, queries, labels = [], [], []
    for u in units:
        for other, label in [(u, "on_topic"), (by_id[u["sibling"]], "sibling")] + [
            (o, "cross") for o in units if o["discipline"] != u["discipline"]
        ]:
            texts.append(u["text"])
            queries.append(unit_query(other))
            labels.append(label)
    assert labels.count("on_topic") >= 50  # one drop is then under 2%
    scores = relevance_scores(texts, queries, embedder)
    kind = np.array(labels)

    def meets(t: float) -> bool:
        dropped = scores < t
        return (
            dropped[kind == "on_topic"].mean() <= 0.02 and dropped[kind == "cross"].mean() >= 0.95
        )

    default = FilterSettings().min_relevance
    assert meets(default)
    assert not meets(round(default - 0.05, 2))  # the lowest on the grid: widest margin


def test_endpoint_embeddings_are_cached_and_retried(fake_openai, tmp_path: Path) -> None:
    fake_openai.embedding_faults = ["500", None]
    settings = EmbeddingSettings(base_url=fake_openai.base_url, model="fake-embed", batch_size=2)
    llm = LLMSettings(backoff_base_s=0.01, prices={"fake-embed": {"input": 1.0, "output": 0.0}})
    e = EndpointEmbedder(settings, llm, tmp_path / "cache")
    texts = ["alpha beta", "alpha beta gamma", "delta", "alpha beta"]
    first = e.embed(texts)
    assert first.shape == (4, 64)
    assert np.allclose(first[0], first[3]) and first[0] @ first[1] > first[0] @ first[2]
    assert e.stats.retries == 1 and e.stats.requests == 2  # 3 distinct texts in batches of 2
    assert e.stats.cost == pytest.approx(e.stats.prompt_tokens / 1e6)
    calls = fake_openai.count("embeddings")
    again = EndpointEmbedder(settings, llm, tmp_path / "cache").embed(texts)
    assert fake_openai.count("embeddings") == calls  # all from the cache
    assert np.allclose(again, first)


def test_endpoint_embeddings_fail_loudly(fake_openai, tmp_path: Path) -> None:
    fake_openai.embedding_faults = ["404"]
    settings = EmbeddingSettings(base_url=fake_openai.base_url, model="nope")
    with pytest.raises(LLMError, match="embeddings request"):
        EndpointEmbedder(settings, LLMSettings(), tmp_path / "c").embed(["x y"])


SECTION = """Intro.

```python
def square(x):
    return x * x
```

```pycon
>>> square(3)
9
>>> [square(i) for i in range(3)]
[0, 1, 4]
>>> 1 / 0
Traceback (most recent call last):
ZeroDivisionError: division by zero
```
"""


def test_code_in_prose_is_checked() -> None:
    assert check_code(SECTION).ok is True
    wrong = check_code(SECTION.replace("9\n", "10\n"))
    assert wrong.ok is False and "square(3)" in wrong.detail
    assert check_code("```python\ndef f(:\n    pass\n```").ok is False
    assert check_code("No code here.").ok is None
    results = check_documents([SECTION, SECTION], ["section", "exercise"], workers=1)
    assert [r.ok for r in results] == [True, None]  # exercises are verified elsewhere


def test_semantic_clusters_find_planted_near_duplicates() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 32))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    near = base[:10] + 0.01 * rng.normal(size=(10, 32))
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    x = np.vstack([base, near]).astype(np.float32)
    ids = [f"d{i:03d}" for i in range(len(x))]
    lengths = np.array([100] * 200 + [500] * 10)  # the copies are longer: they are kept
    result = semantic_clusters(ids, x, threshold=0.95, cluster_size=40, lengths=lengths)
    assert result.groups == 10 and result.removed == 10 and result.kmeans_clusters == 6
    removed = set(result.clusters.filter(pl.col("removed"))["id"])
    assert removed == {f"d{i:03d}" for i in range(10)}
    rec = removal_records(result.clusters, 0.95)
    assert set(rec["reason"]) == {"semantic_dup"} and set(rec["stage"]) == {"dedup"}
    assert rec.filter(pl.col("id") == "d000")["representative_id"].to_list() == ["d200"]


def test_semantic_pairs_are_the_same_whatever_the_block_of_cosines(monkeypatch) -> None:
    """Cosines are computed a block of rows at a time, sized so a block holds about
    ``_BLOCK_CELLS`` cosines whatever the cluster's size: any block gives the same pairs
    (their cosines equal up to the matrix product's float32 rounding)."""
    from builder.quality import semdedup

    rng = np.random.default_rng(4)
    base = rng.normal(size=(60, 16))
    x = np.vstack([base, base[:25] + 0.02 * rng.normal(size=(25, 16))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    members = np.arange(len(x))[::-1].copy()
    want = semdedup._pairs(x, members, 0.95)
    assert len(want[0]) >= 25
    for cells in (1, 7, 85, 86 * 85):
        monkeypatch.setattr(semdedup, "_BLOCK_CELLS", cells)
        i, j, cos = semdedup._pairs(x, members, 0.95)
        assert np.array_equal(i, want[0]) and np.array_equal(j, want[1])
        np.testing.assert_allclose(cos, want[2], rtol=0, atol=1e-6)  # BLAS rounding only


def test_assignment_to_centres_holds_a_block_of_cosines_whatever_the_centres(
    monkeypatch,
) -> None:
    """Each row goes to its nearest centre in blocks of at most ``_BLOCK_CELLS`` cosines
    (the centres grow with the corpus): the labels are those of the whole product, and no
    block of rows times centres passes the cells."""
    from builder.quality import semdedup

    rng = np.random.default_rng(5)
    x = rng.normal(size=(97, 8)).astype(np.float32)
    centres = rng.normal(size=(13, 8)).astype(np.float32)
    want = np.argmax(x @ centres.T, axis=1)
    blocks: list[int] = []

    class Rows(np.ndarray):
        def __getitem__(self, key):
            got = super().__getitem__(key)
            blocks.append(len(got))
            return np.asarray(got)

    for cells in (1, 40, 13 * 97, 10**9):
        monkeypatch.setattr(semdedup, "_BLOCK_CELLS", cells)
        blocks.clear()
        assert np.array_equal(semdedup.assign(x.view(Rows), centres), want)
        assert max(blocks) * 13 <= max(cells, 13)
        assert sum(blocks) == 97
    assert max(blocks) == 97 and len(blocks) == 1  # the default 8,192 rows, when they fit


def test_diversity_metrics_rank_paraphrases_below_a_varied_set(
    embedder: WordLlamaEmbedder,
) -> None:
    para = [
        "The derivative measures how fast a function changes at a point.",
        "A derivative tells how quickly a function changes at a given point.",
        "The derivative measures how quickly the function changes at one point.",
        "How fast a function changes at a point is measured by its derivative.",
    ]
    varied = [
        "The derivative measures how fast a function changes at a point.",
        "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
        "A Python dictionary maps hashable keys to values with fast lookup.",
        "The French Revolution began in 1789 with the storming of the Bastille.",
    ]

    def corpus(texts: list[str], name: str) -> dict:
        frame = pl.DataFrame(
            {"id": [f"{name}{i}" for i in range(4)], "text": texts, "taxonomy_path": ["m/c/d"] * 4}
        )
        nodes = node_diversity(frame, embedder.embed(texts))
        assert set(nodes["node"]) == {"(all)", "m", "m/c", "m/c/d"}
        return nodes.filter(pl.col("node") == "(all)").to_dicts()[0]

    p, v = corpus(para, "p"), corpus(varied, "v")
    assert p["compression_ratio"] > v["compression_ratio"]
    for n in (1, 2, 3, 4):
        assert p[f"distinct_{n}"] < v[f"distinct_{n}"]
    assert p["mean_similarity"] > v["mean_similarity"]
    assert p["vendi"] < v["vendi"] <= 4.0001


def test_vendi_and_mean_similarity_extremes() -> None:
    same = np.tile(np.eye(8, dtype=np.float32)[:1], (5, 1))
    assert vendi_score(same) == pytest.approx(1.0)
    assert mean_similarity(same) == pytest.approx(1.0)
    ortho = np.eye(8, dtype=np.float32)[:5]
    assert vendi_score(ortho) == pytest.approx(5.0)
    assert mean_similarity(ortho) == pytest.approx(0.0)
