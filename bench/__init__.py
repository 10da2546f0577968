"""The benchmarks, each a script (``python bench/NAME.py``), and the parts the tests drive too.

The tests import those parts as ``bench.NAME`` (the producer processes and measurements of
``daemon_load``, the producer process of ``producer_faults``, the fuzzer of ``fuzz_daemon``), so a
benchmark and its test run the same code. Run as a script, a benchmark puts the repository root on
the path itself, so that ``bench`` is importable there too.
"""
