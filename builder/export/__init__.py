"""Training exports of a finished run: chat, Alpaca, ShareGPT and plain-text datasets.

``export_run(run_dir, out, ExportOptions(format="chat", ...))`` reads the run's
``documents/*.parquet`` shard by shard and writes a dataset directory that
``datasets.load_dataset(out)`` loads (Parquet or JSONL shards per split, and a README.md
card whose YAML ``configs`` lists them). Modules: ``options`` (what to export), ``exercise``
(an exercise row as question and answer), ``formats`` (one row builder per format),
``split`` (train/test by taxonomy node), ``writer`` (staging + swap), ``card`` (README.md),
``run`` (the loop).
"""

from builder.export.options import FORMAT_NAMES, REASONING_MODES, ExportOptions
from builder.export.run import ExportSummary, export_run

__all__ = ["FORMAT_NAMES", "REASONING_MODES", "ExportOptions", "ExportSummary", "export_run"]
