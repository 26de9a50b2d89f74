"""HOHOHO benchmarks: ``python -m bench.run_all`` (or ``make bench``), see bench/README.md.

Each section module (`whole_study`, `preprocessing`, `saliency`, `tsne`, `training`,
`viewer`) exposes ``run(ctx: BenchContext) -> Section``; `run_all` strings them together and
`report` turns ``results.json`` into ``results.md``. Timings never live in the test suite:
``tests/test_bench_smoke.py`` only checks that these code paths run at tiny sizes.
"""
