"""Text embeddings for the quality gates: offline WordLlama, or an OpenAI-compatible endpoint.

Both embedders turn a list of texts into an ``(n, dim)`` float32 array of unit vectors (a
text with no tokens gets the zero vector, whose cosine with anything is 0), so relevance,
semantic dedup and diversity are plain dot products.

* ``WordLlamaEmbedder`` (default): WordLlama's ``l2_supercat`` 256-d static token
  embeddings, loaded from the wheel's own files with ``disable_download=True`` (a plain
  ``WordLlama.load()`` tries Hugging Face and fails offline). A document's vector is the mean
  of its tokens' vectors. WordLlama's own ``embed`` pads each batch to its longest text and
  gathers a ``(batch, tokens, 256)`` array; here the batch is tokenized through a cache of
  distinct words (``builder.quality.pieces``: the same token ids as the whole-text
  tokenizer) and pooled as one sparse token-count matrix times the embedding table (the
  same vectors at many times the throughput, which is what lets relevance be on by
  default; bench/quality.py measures both).
* ``EndpointEmbedder``: ``POST {base_url}/embeddings`` through the engine's parts
  (``builder.llm``): its transport (error classification, keys never in messages), its
  backoff, its SQLite cache (one entry per text, keyed by the sha256 of endpoint, model,
  dimensions and text) and its prices (``[llm] prices``, input tokens only) with an optional
  spending cap.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from builder.errors import BudgetExceeded, ConfigError, LLMError
from builder.records import sha256_hex
from builder.settings.llm import LLMSettings
from builder.settings.quality import EmbeddingSettings

#: The bundled model's name in cache keys, columns and the card.
WORDLLAMA_MODEL = "wordllama-0.4.0.post1/l2_supercat-256"
#: Terms of the bundled weights, shown in the dataset card (see ``weights_terms``).
WORDLLAMA_TERMS = (
    "WordLlama 0.4.0.post1 (code: MIT, Lee Miller). Its weights file "
    "`weights/l2_supercat_256.safetensors` ships inside the MIT-licensed wheel and carries no "
    "licence of its own (no safetensors metadata, no separate notice). The weights were "
    "trained from token-embedding codebooks extracted from several models sharing the Llama 2 "
    "tokenizer, including Llama 2 70B and the MIT-licensed Phi-3 medium (per the package "
    "README), so the Llama 2 Community License (Meta) may extend to them; it permits use and "
    "redistribution with attribution, and forbids using Llama Materials or their outputs to "
    "improve other large language models. Here the embeddings only score and filter "
    "documents; none of their output is training text."
)
EMBED_CACHE_FORMAT = 1


class Embedder(Protocol):
    """Anything that turns texts into unit vectors."""

    name: str

    def embed(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 unit vectors (zero vector for an empty text)."""
        ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


def wordllama_dir() -> Path:
    """The installed ``wordllama`` package directory (found without importing it)."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedding model package wordllama is not installed",
            hint="pip install wordllama==0.4.0.post1, or set [embeddings] base_url and model",
        )
    return Path(next(iter(spec.submodule_search_locations)))


class WordLlamaEmbedder:
    """WordLlama l2_supercat (256-d) from the wheel's files; never touches the network."""

    name = WORDLLAMA_MODEL

    def __init__(self, *, max_chars: int = 8000, batch_size: int = 4096) -> None:
        from wordllama import WordLlama

        from builder.quality.pieces import PieceTokenizer

        model = WordLlama.load(cache_dir=wordllama_dir(), disable_download=True)
        self.matrix = np.ascontiguousarray(model.embedding, dtype=np.float32)
        self.tokenizer = model.tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.pieces = PieceTokenizer(self.tokenizer)
        self.dim = int(self.matrix.shape[1])
        self.max_chars = max_chars
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = [
                t[: self.max_chars] if t else "" for t in texts[start : start + self.batch_size]
            ]
            # the mean of each text's token vectors, without one vector per token
            sums, lengths = self.pieces.token_sums(chunk, self.matrix)
            nonempty = lengths > 0
            out[start : start + len(chunk)][nonempty] = sums[nonempty] / lengths[nonempty, None]
        return _normalise(out)


# --------------------------------------------------------------------------- endpoint


@dataclass
class EmbedStats:
    """What an ``EndpointEmbedder`` did: texts sent and cached, requests, tokens, USD."""

    texts: int = 0
    cached: int = 0
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    cost: float = 0.0
    errors: list[str] = field(default_factory=list)


class EndpointEmbedder:
    """``/v1/embeddings`` of an OpenAI-compatible server, cached and retried by the engine's
    parts (see the module docstring). ``max_cost`` caps USD spent by this embedder."""

    def __init__(
        self,
        settings: EmbeddingSettings,
        llm: LLMSettings,
        cache_dir: str | Path,
        *,
        max_cost: float | None = None,
    ) -> None:
        from builder.llm.budget import price_for, require_price
        from builder.llm.cache import Cache
        from builder.llm.endpoint import endpoints_from_settings

        if not settings.base_url or not settings.model:
            raise ConfigError("[embeddings] base_url and model are needed for an endpoint")
        ep_settings = llm.model_copy(
            update={
                "base_url": settings.base_url,
                "model": settings.model,
                "api_key_env": settings.api_key_env,
                "endpoints": [],
                "embedded": False,
                "max_concurrency": settings.max_concurrency,
            }
        )
        self.endpoint = endpoints_from_settings(ep_settings)[0]
        self.llm = ep_settings
        self.settings = settings
        self.name = settings.model
        self.cache = Cache(cache_dir)
        self.max_cost = max_cost
        self.price = (
            require_price(llm, settings.model) if max_cost is not None else None
        ) or price_for(llm, settings.model)
        self.stats = EmbedStats()

    def _key(self, text: str) -> str:
        return sha256_hex(
            {
                "format": EMBED_CACHE_FORMAT,
                "endpoint": self.endpoint.cache_url,
                "model": self.settings.model,
                "dimensions": self.settings.dimensions,
                "input": text,
            }
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        texts = [t[: self.settings.max_chars] if t else "" for t in texts]
        vectors: dict[str, list[float]] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            if not text.strip():
                continue
            hit = self.cache.get(self._key(text))
            if hit is not None and isinstance(hit.parsed, list):
                vectors[text] = hit.parsed
                self.stats.cached += 1
            else:
                missing.append(text)
        self.stats.texts += len(texts)
        if missing:
            size = self.settings.batch_size
            batches = [missing[i : i + size] for i in range(0, len(missing), size)]
            for batch, got in zip(batches, asyncio.run(self._send_all(batches)), strict=True):
                vectors.update(zip(batch, got, strict=True))
        dim = len(next(iter(vectors.values()))) if vectors else 1
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, text in enumerate(texts):
            if text in vectors:
                out[i] = vectors[text]
        return _normalise(out)

    async def _send_all(self, batches: list[list[str]]) -> list[list[list[float]]]:
        from builder.llm.transports import make_transport

        transport = make_transport(self.endpoint, self.llm)
        limit = asyncio.Semaphore(self.settings.max_concurrency)

        async def one(batch: list[str]) -> list[list[float]]:
            async with limit:
                return await self._send(transport, batch)

        try:
            return list(await asyncio.gather(*(one(b) for b in batches)))
        finally:
            await transport.close()

    def _reserve(self, batch: list[str]) -> None:
        if self.max_cost is None or self.price is None:
            return
        from builder.llm.budget import count_tokens

        worst = self.price.cost(sum(count_tokens(t) for t in batch), 0)
        if self.stats.cost + worst > self.max_cost:
            raise BudgetExceeded(
                f"[embeddings] budget ${self.max_cost:g} reached after ${self.stats.cost:.4f}",
                hint="raise --max-cost; embeddings already computed are cached",
            )

    async def _send(self, transport: Any, batch: list[str]) -> list[list[float]]:
        from builder.llm.cache import CacheEntry
        from builder.llm.control import backoff_delay
        from builder.llm.transport import AttemptError

        body: dict[str, Any] = {"model": self.settings.model, "input": batch}
        if self.settings.dimensions:
            body["dimensions"] = self.settings.dimensions
        self._reserve(batch)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                reply = await transport.request_json("POST", "embeddings", json_body=body)
                data = sorted(reply["data"], key=lambda d: d["index"])
                got = [list(map(float, d["embedding"])) for d in data]
                if len(got) != len(batch):
                    raise AttemptError("retry", f"{len(got)} embeddings for {len(batch)} inputs")
                break
            except (KeyError, TypeError, ValueError) as exc:
                err = AttemptError("retry", f"malformed embeddings response ({exc!r})")
            except AttemptError as exc:
                err = exc
            s = self.llm
            out_of_time = time.monotonic() - started > s.max_retry_time_s
            if err.kind != "retry" or attempt >= s.max_attempts or out_of_time:
                self.stats.errors.append(err.reason)
                raise LLMError(
                    f"embeddings request to {self.endpoint.label} failed after {attempt} "
                    f"attempt(s): {err.reason}",
                    hint="check [embeddings] base_url and model, or remove them to use the "
                    "bundled offline model",
                )
            self.stats.retries += 1
            await asyncio.sleep(
                backoff_delay(attempt, s.backoff_base_s, s.backoff_max_s, err.retry_after)
            )
        usage = reply.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        cost = self.price.cost(tokens, 0) if self.price is not None else 0.0
        self.stats.requests += 1
        self.stats.prompt_tokens += tokens
        self.stats.cost += cost
        latency = time.monotonic() - started
        self.cache.put_many(
            CacheEntry(
                key=self._key(text),
                base_url=self.endpoint.cache_url,
                model=self.settings.model or "",
                status="ok",
                text=None,
                parsed=vec,
                finish_reason=None,
                prompt_tokens=tokens // max(1, len(batch)),
                completion_tokens=0,
                cost=cost / max(1, len(batch)),
                latency_s=latency,
                attempts=attempt,
                error=None,
                request=json.dumps({**body, "input": [text]}),
                response="{}",
            )
            for text, vec in zip(batch, got, strict=True)
        )
        return got


def open_embedder(
    settings: EmbeddingSettings,
    llm: LLMSettings,
    cache_dir: str | Path | None = None,
    *,
    max_cost: float | None = None,
) -> Embedder:
    """The configured embedder: the endpoint when ``[embeddings]`` names one, else WordLlama."""
    if settings.base_url:
        if cache_dir is None:
            raise ConfigError("an embeddings endpoint needs a cache directory")
        return EndpointEmbedder(settings, llm, cache_dir, max_cost=max_cost)
    return WordLlamaEmbedder(max_chars=settings.max_chars)


def weights_terms(embedder: Embedder) -> str:
    """The licence terms of an embedder's weights, for the dataset card."""
    if embedder.name == WORDLLAMA_MODEL:
        return WORDLLAMA_TERMS
    return f"{embedder.name}: served by the configured [embeddings] endpoint (its terms apply)."
