"""The logdir format, one module per job: `metadata` (its identity, shared with the
plugin), `schema` (each analysis's result as tagged values and back), `writer`, `reader`
and `progress_store`. docs/logdir-format.md is its description."""
