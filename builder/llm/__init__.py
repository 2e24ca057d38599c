"""The LLM engine: cached, retried, budget-capped chat completions (see base.LLM)."""
