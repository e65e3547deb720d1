"""Prefect tasks, one per pipeline stage, plus the flow's bookkeeping (params overrides, published report).
Importing this package changes nothing: entry points call tasks.environment.quiet_offline first."""
