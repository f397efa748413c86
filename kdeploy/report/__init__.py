"""The run's report: every number as JSON (``build``), the Markdown view (``markdown``),
the plots (``plots``) and the per-model statistics they quote (``stats``)."""
