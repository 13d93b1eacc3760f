"""The benchmarks: measured ratios against targets (``python -m scripts.bench``).

Modules: ``runner`` (the command line and the worker processes), ``common`` (timing,
memory and row helpers), ``training``, ``evaluation``, ``retrieval``, ``gpu`` (the rows).
"""
