"""Quality filters and verification of generated rows: what is kept, and why the rest is not.

``filter_documents`` takes the raw rows of builder.generate (documents and failed results)
and splits them into kept documents and rejected rows. Every rejected row keeps its
document fields and records ``stage`` ("generate" | "filter" | "verify"), ``reason`` and a
human ``detail``; nothing disappears silently. Checks run cheapest first:

====================  =======  ======================================================
reason                stage    when
====================  =======  ======================================================
failed                generate the request kept failing (the engine's error is the detail)
malformed             generate structured output that did not validate (engine: invalid)
truncated             filter   cut off by max_tokens (finish_reason "length")
empty                 filter   no text
malformed             filter   an exercise whose JSON lacks its fields (templates.REQUIRED_FIELDS)
refusal               filter   the reply refuses the task ("I'm sorry, but I can't ...")
too_short             filter   fewer cl100k tokens than min_tokens (Cosmopedia: 150)
repetition            filter   share of repeated word n-grams above max_repetition
wrong_language        filter   CLD2 (pycld2) finds another language in the prose
(verifier's reason)   verify   builder.verify ran the exercise and it failed
====================  =======  ======================================================

Exercises that pass verification get ``verified = True``; exercises that cannot be checked
(conceptual questions) keep ``verified = None``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import pyarrow as pa

from builder.records import DOCUMENT_COLUMNS, EXTRA_COLUMNS, REJECTION_COLUMNS
from builder.settings.filters import FilterSettings, VerifySettings
from builder.templates import structured_field, structured_problem
from builder.tokens import count_tokens_one

#: Extra fields of rejected rows (what the generation stage knew about the failure).
REJECTED_EXTRA_COLUMNS: tuple[str, ...] = ("status", "error")

#: Refusal phrasings, searched (case-insensitive) in the first 400 characters of a reply.
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"^(?:i'm|i am|i)?\s*(?:so |very |truly )?(?:sorry|apologi[sz]e)\b[^.\n]{0,80}?"
    r"\b(?:can(?:not|'t)|unable|not able|won't|will not)\b",
    r"^(?:unfortunately|regrettably),? i (?:can(?:not|'t)|am unable|'m unable|won't)\b",
    r"^i (?:can(?:not|'t)|won't|will not|am unable to|'m unable to|am not able to|'m not able to)"
    r" (?:help|assist|provide|write|create|generate|comply|fulfil|fulfill|complete|answer|"
    r"do (?:that|this)|produce)\b",
    r"\bas an ai(?: language model| model| assistant)?\b",
    r"\bi (?:must|have to) (?:decline|refuse)\b",
    r"\bcan(?:not|'t) (?:fulfil|fulfill|comply with|help with|assist with) (?:this|your|that)\b",
    r"\b(?:against|violates?) (?:my|the|our|openai's) (?:guidelines|policy|policies|"
    r"programming|content policy)\b",
)

#: Words one of which every pattern of REFUSAL_PATTERNS needs (checked before the regex).
_REFUSAL_KEYWORDS: tuple[str, ...] = (
    "sorry",
    "apologi",
    "unfortunately",
    "regrettably",
    "i can",
    "i won",
    "i will",
    "i am",
    "i'm",
    "as an ai",
    "decline",
    "refuse",
    "cannot",
    "can't",
    "against",
    "violat",
)

_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]", re.S)
_URL = re.compile(r"https?://\S+")
_WORD = re.compile(r"\w+", re.U)
#: ASCII characters that ``\w`` does not match, mapped to a space: for ASCII text,
#: ``text.translate(_NOT_WORD).split()`` is ``_WORD.findall(text)`` at a third of the cost.
_NOT_WORD = str.maketrans({c: " " for c in map(chr, range(128)) if not (c.isalnum() or c == "_")})
_SPACES = re.compile(r"[ \t]{2,}|\t")

Verifier = Callable[..., Any]


# --------------------------------------------------------------------------- checks


@cache
def _compiled(extra: tuple[str, ...]) -> re.Pattern[str]:
    # One alternation: one scan of the head instead of one per pattern (a hot path).
    return re.compile("|".join(f"(?:{p})" for p in (*REFUSAL_PATTERNS, *extra)), re.I | re.M)


def refusal_match(text: str, extra_patterns: Iterable[str] = ()) -> str | None:
    """The refusal phrase at the start of ``text``, or None if it does not refuse."""
    head = text.strip()[:400].replace("\u2019", "'").replace("\u2018", "'").lower()
    head = head.lstrip("#>*_ \t\r\n\f\v")  # a heading or quote marker before the words
    extra = tuple(extra_patterns)
    if not extra and not any(k in head for k in _REFUSAL_KEYWORDS):
        return None  # every built-in pattern needs one of these words (a hot path)
    m = _compiled(extra).search(head)
    return m.group(0).strip() if m else None


def repetition_ratio(text: str, n: int = 3, min_words: int = 1) -> float:
    """Share of word n-grams that repeat an earlier one (0: none, near 1: a loop).

    Texts with fewer than ``min_words`` words score 0 (too little to judge).
    """
    return _repetition(_words(text), n, min_words)


def _words(text: str) -> list[str]:
    r"""``_WORD.findall(text.lower())``: the lowercased ``\w+`` words of ``text``."""
    low = text.lower()
    if low.isascii():
        return low.translate(_NOT_WORD).split()
    return _WORD.findall(low)


def _repetition(words: list[str], n: int, min_words: int) -> float:
    if len(words) < max(min_words, n):
        return 0.0
    total = len(words) - n + 1
    grams = set(zip(*(words[i:] for i in range(n)), strict=False))
    return 1.0 - len(grams) / total


def prose_of(row: dict[str, Any]) -> str:
    """The natural-language part of a row: no code blocks, inline code, formulas or URLs.

    Language and repetition checks look at prose only: code is neither English nor
    sensibly judged by n-gram repetition (tests repeat ``assert f(`` by design).
    """
    structured = row.get("structured")
    if isinstance(structured, dict) and row.get("exercise_type"):
        fields = {
            "code": ("problem",),
            "quantitative": ("problem", "worked_solution"),
            "conceptual": ("problem", "answer"),
        }.get(row["exercise_type"], ())
        text = "\n\n".join(structured_field(structured, f) for f in fields)
    else:
        text = row.get("text") or ""
    # Each pattern only where its marker occurs: most prose has none (a hot path).
    if "`" in text:
        text = _INLINE_CODE.sub(" ", _CODE_BLOCK.sub(" ", text))
    if "$" in text or "\\" in text:
        text = _MATH.sub(" ", text)
    if "://" in text:
        text = _URL.sub(" ", text)
    if "  " in text or "\t" in text:
        text = _SPACES.sub(" ", text)
    return text.strip()


def detect_language(text: str) -> tuple[str, float] | None:
    """Most likely language of ``text`` (ISO 639-1 code) and its share of the text, or None.

    Google's Compact Language Detector 2 (``pycld2``): deterministic, offline and ~0.2 ms a
    document (langdetect took ~10 ms). None when CLD2 cannot tell (too little text, unknown).
    """
    import pycld2

    try:
        reliable, _bytes, details = pycld2.detect(text)
    except pycld2.error:
        # CLD2 refuses some byte sequences (lone surrogates, control characters): clean them.
        clean = text.encode("utf-8", "ignore").decode("utf-8", "ignore")
        clean = "".join(ch for ch in clean if ch.isprintable() or ch in "\n\t")
        try:
            reliable, _bytes, details = pycld2.detect(clean)
        except pycld2.error:
            return None
    if not details:
        return None
    _name, code, percent, _score = details[0]
    if code in ("un", "xxx") or not reliable:
        return None
    return code, percent / 100.0


def check_row(row: dict[str, Any], settings: FilterSettings) -> tuple[str, str, str] | None:
    """The first (stage, reason, detail) that rejects ``row``, or None if it passes.

    Sets ``row["n_tokens"]`` (the text's cl100k count) once it got that far, so every row
    that passes carries its count (assembly takes it, ``assemble(counted=True)``).
    """
    status = row.get("status", "ok")
    if status == "failed":
        return "generate", "failed", row.get("error") or "request failed"
    if status == "invalid" and settings.drop_malformed:
        return "generate", "malformed", row.get("error") or "structured output did not validate"
    if status == "length" and settings.drop_truncated:
        return (
            "filter",
            "truncated",
            f"cut off by max_tokens after {row.get('completion_tokens')} tokens",
        )
    text = row.get("text") or ""
    if not text.strip():
        return "filter", "empty", "the reply has no text"
    if row.get("output") == "json" or row.get("structured") is not None:
        problem = structured_problem(row.get("exercise_type"), row.get("structured"))
        if problem and settings.drop_malformed:
            return "filter", "malformed", problem
    if settings.drop_refusals:
        match = refusal_match(text, settings.refusal_patterns)
        if match:
            return "filter", "refusal", f"refusal phrase: {match[:120]!r}"
    minimum = settings.min_tokens_by_kind.get(row.get("kind") or "", settings.min_tokens)
    n_tokens = row["n_tokens"] = count_tokens_one(text)  # cl100k, as the corpus reports it
    if n_tokens < minimum:
        return "filter", "too_short", f"{n_tokens} tokens < min_tokens {minimum}"
    prose = prose_of(row)
    if settings.max_repetition < 1:
        words = _words(prose)
        if len(words) < settings.repetition_min_words:
            words = _words(text)
        ratio = _repetition(words, settings.repetition_ngram, settings.repetition_min_words)
        if ratio > settings.max_repetition:
            return (
                "filter",
                "repetition",
                f"{ratio:.2f} of word {settings.repetition_ngram}-grams repeat "
                f"(max_repetition {settings.max_repetition})",
            )
    if settings.language and len(prose) >= settings.language_min_chars:
        found = detect_language(prose[: settings.language_max_chars])
        if found is not None and found[0] != settings.language:
            return (
                "filter",
                "wrong_language",
                f"detected {found[0]} (p={found[1]:.2f}), expected {settings.language}",
            )
    return None


# --------------------------------------------------------------------------- rows


def to_document(row: dict[str, Any]) -> dict[str, Any]:
    """A kept row as a document: DOCUMENT_COLUMNS in order, then EXTRA_COLUMNS."""
    return {c: row.get(c) for c in (*DOCUMENT_COLUMNS, *EXTRA_COLUMNS)}


def to_rejected(row: dict[str, Any], stage: str, reason: str, detail: str | None) -> dict[str, Any]:
    """A rejected row: REJECTION_COLUMNS first, then the document fields it had."""
    out: dict[str, Any] = {"id": row.get("id"), "stage": stage, "reason": reason}
    out["detail"] = detail
    for c in (*DOCUMENT_COLUMNS, *EXTRA_COLUMNS, *REJECTED_EXTRA_COLUMNS):
        if c not in REJECTION_COLUMNS:
            out[c] = row.get(c)
    return out


def filter_documents(
    rows: Iterable[dict[str, Any]],
    filter_settings: FilterSettings,
    verify_settings: VerifySettings,
    llm: Any = None,
    *,
    verifier: Verifier | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split generation rows into (kept documents, rejected rows), each in input order.

    Cheap filters first (``check_row``). Exercises that pass are then verified when
    ``verify_settings.enabled``: by ``builder.verify.verify_documents`` (parallel sandboxes,
    batched second samples through ``llm``), or by ``verifier(doc, verify_settings, llm=llm)``
    if one is given. A failed check goes to rejected with stage "verify" and the verdict's
    reason, unless ``drop_unverified`` is off (then it is kept with ``verified = False``).
    Input rows are not modified.
    """
    outcomes = _outcomes(rows, filter_settings, verify_settings, llm, verifier)
    kept = [doc for where, doc in outcomes if where == "kept"]
    rejected = [row for where, row in outcomes if where == "rejected"]
    return kept, rejected


def _outcomes(
    rows: Iterable[dict[str, Any]],
    filter_settings: FilterSettings,
    verify_settings: VerifySettings,
    llm: Any,
    verifier: Verifier | None,
) -> list[tuple[str, dict[str, Any]]]:
    """``filter_documents``' verdicts: ("kept", document) or ("rejected", row), one per
    input row, in input order."""
    outcomes: list[tuple[str, dict[str, Any]] | None] = []
    to_verify: list[tuple[int, dict[str, Any]]] = []
    for source in rows:
        row = dict(source)
        verdict = check_row(row, filter_settings)
        if verdict is not None:
            outcomes.append(("rejected", to_rejected(row, *verdict)))
            continue
        doc = to_document(row)
        if verify_settings.enabled and doc.get("kind") == "exercise":
            to_verify.append((len(outcomes), doc))
            outcomes.append(None)
        else:
            outcomes.append(("kept", doc))
    if to_verify:
        docs = [doc for _i, doc in to_verify]
        if verifier is not None:
            verdicts: Iterable[tuple[dict[str, Any], Any]] = (
                (doc, verifier(doc, verify_settings, llm=llm)) for doc in docs
            )
        else:
            from builder.verify import verify_documents

            verdicts = verify_documents(docs, verify_settings, llm=llm)
        for (slot, doc), (_doc, result) in zip(to_verify, verdicts, strict=True):
            doc["verified"] = result.verified
            if result.verified is False and verify_settings.drop_unverified:
                reason = result.reason or "unverified"
                outcomes[slot] = ("rejected", to_rejected(doc, "verify", reason, result.detail))
            else:
                outcomes[slot] = ("kept", doc)
    return [outcome for outcome in outcomes if outcome is not None]


#: The columns ``check_row`` reads (with ``prose_of`` and the refusal and length checks).
_CHECK_COLUMNS = (
    "status",
    "error",
    "completion_tokens",
    "text",
    "output",
    "structured",
    "exercise_type",
    "kind",
)


def filter_table(
    table: pa.Table,
    filter_settings: FilterSettings,
    verify_settings: VerifySettings,
    llm: Any = None,
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """``filter_documents`` over a table of generation rows (``GENERATED_SCHEMA``):
    (kept documents as a ``DOCUMENT_SCHEMA`` table, rejected rows), each in input order,
    the same rows and values as ``filter_documents`` of the table's rows gives.

    Rows without structured output that need no verification are checked from a few
    columns and, when they pass, taken from the table as they are (with the ``n_tokens``
    ``check_row`` counted) instead of becoming dicts and a table again; the others (and
    every rejected row) go through ``filter_documents``. Every kept row has its count.
    """
    from builder.records import DOCUMENT_SCHEMA, decode_row, to_table

    names = set(table.column_names)
    cols = {c: table.column(c).to_pylist() for c in _CHECK_COLUMNS if c in names}
    n = table.num_rows
    structured = cols.get("structured") or [None] * n
    kinds = cols.get("kind") or [None] * n
    verify = verify_settings.enabled
    fast: list[int] = []
    counts: list[int] = []
    slow: list[int] = []
    for i in range(n):
        if structured[i] is not None or (verify and kinds[i] == "exercise"):
            slow.append(i)
            continue
        row = {c: v[i] for c, v in cols.items()}
        if check_row(row, filter_settings) is None:
            fast.append(i)
            counts.append(row["n_tokens"])
        else:
            slow.append(i)  # rejected: its full row is built below
    kept = to_table(table.take(pa.array(fast, pa.int64())), DOCUMENT_SCHEMA)
    at = kept.schema.get_field_index("n_tokens")
    kept = kept.set_column(at, kept.schema.field(at), pa.array(counts, pa.int64()))
    if not slow:
        return kept, []
    rows = [decode_row(r) for r in table.take(pa.array(slow, pa.int64())).to_pylist()]
    outcomes = _outcomes(rows, filter_settings, verify_settings, llm, None)
    slow_kept = [
        (i, doc) for i, (where, doc) in zip(slow, outcomes, strict=True) if where == "kept"
    ]
    if slow_kept:
        order = [*fast, *(i for i, _doc in slow_kept)]
        both = pa.concat_tables([kept, to_table([doc for _i, doc in slow_kept], DOCUMENT_SCHEMA)])
        kept = both.take(pa.array(sorted(range(len(order)), key=order.__getitem__), pa.int64()))
    return kept, [row for where, row in outcomes if where == "rejected"]


def rejection_counts(rejected: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Rejected rows counted by ``stage/reason`` (for reports and the CLI)."""
    counts = Counter(f"{r['stage']}/{r['reason']}" for r in rejected)
    return dict(sorted(counts.items()))
