"""Measurement of sidesteer: the throughput benchmark, its worker timing RPCs, tables, CPU pinning (not installed).

The product (sidesteer, vectors, engine, app, rollouts) never imports this package (tests/test_layering.py checks),
and pyproject.toml leaves it out of the wheel. One entry point, ``python -m bench`` (see :mod:`bench.__main__`).
"""
