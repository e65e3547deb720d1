"""Prefect tasks, one per DVC stage, plus the flow's bookkeeping (params overrides, the report's artifacts).
Importing this package changes nothing: entry points call tasks.environment.quiet_offline first."""
