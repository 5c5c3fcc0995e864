"""The search-space layer: the YAML spaces beside this file and their schema (`search_spaces.space`:
parsing, validation, targets and buckets). It builds on `kernels` and `patterns` only; `results`
(which judges measurements against a space's targets) and `autotune` (which searches it) build on
it."""
