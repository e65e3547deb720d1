"""What every stage shares: where artifacts live (paths.py), atomic writes (atomic.py), the errors a user
can act on (errors.py) and the command-line runner of a stage (stage.py)."""
