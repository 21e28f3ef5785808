"""Benchmarks of the operator on the local control plane (`make bench`, or `python tests/bench/run.py`).

Importing this package (or any module in it) starts nothing: every benchmark does its work only
when its `run()` is awaited.
"""
