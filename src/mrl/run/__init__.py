"""Run directories: layout, records, checkpoints, resume, sweep summaries."""
