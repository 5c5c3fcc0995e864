"""Autotuner for block-sparse attention patterns in protein structure models.

`autotune` is the top layer: trials, workloads, executors, the search driver, accuracy, the
benchmarks and the command-line tools. It builds on `results` (database, export writer, report),
`search_spaces` (the space schema), `models` (the deployable EvoFormer), `kernels` and `patterns`
(README, repository layout). Importing it imports nothing else.
"""
