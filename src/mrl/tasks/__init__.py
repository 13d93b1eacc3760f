"""Tasks: the only modules that orchestrate (compose objects, run them, write the run dir)."""
