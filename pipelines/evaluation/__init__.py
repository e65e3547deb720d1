"""Judging trained models: test metrics (metrics.py), the markdown report that renders them (report.py)
and the optimization study's table and plots (study.py)."""
