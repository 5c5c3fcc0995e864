"""The search-space layer: the YAML spaces beside this file and their schema (`search_spaces.space`,
the face over one module per part: `schema`, `checks`, `settings`, `workloads`, `targets`, `limits`,
`search_space`, `parse`). It builds on `kernels` and `patterns` only; `results`
(which judges measurements against a space's targets) and `autotune` (which searches it) build on
it."""
