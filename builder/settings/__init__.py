"""One pydantic model per corpus.toml section; ``builder.config`` composes them.

Each section lives in its own module so the stage that owns it can evolve it alone.
Every model forbids unknown keys: a typo is an error, not a silent default.
"""
