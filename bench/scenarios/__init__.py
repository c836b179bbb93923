"""Scenarios of the benchmark suite run by ``bench/run.py``; see ``docs/performance.rst``.

Each scenario module exposes ``run(quick, ctx) -> list[dict]``: one result per measured
figure, with every raw run. Child processes (publishers, subscribers, receivers) are the
``*_child.py`` scripts next to them, started with ``python FILE ARGS``.
"""
