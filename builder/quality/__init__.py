"""Quality gates (issue 13): algorithms over batches of documents, no I/O policy.

- ``embed``: offline WordLlama embeddings (weights in the wheel, no network) or an
  OpenAI-compatible ``/v1/embeddings`` endpoint through the engine's cache and retries
- ``relevance``: cosine of unit and text embeddings; ``off_topic`` below ``min_relevance``
- ``judge``: an LLM grades educational value 0-5 (FineWeb-Edu-style additive rubric)
- ``semdedup``: semantic near-duplicates (k-means, then comparisons within clusters)
- ``metrics``: compression ratio, distinct-n, mean pairwise similarity, Vendi score
- ``codecheck``: Python fences parsed, ``>>>`` examples run in the verification sandbox
- ``summary``: the run's quality and diversity data, card section and report map
- ``hooks``: today's pipeline glue (one call per gate in ``builder.pipeline``)
"""
