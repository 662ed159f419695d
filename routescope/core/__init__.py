"""The bottom layer: types every other package shares, importing nothing else of routescope.

- `errors`: the user-facing error classes (one clear line each);
- `records`: `BatchRouting`, what the collection engine hands to a store writer;
- `trace`: `Trace`, the in-memory routing arrays every analysis kernel takes;
- `source`: `TraceSource`, a run read chunk by chunk (the store, a Parquet dataset, or a Trace);
- `protocols`: `RunWriter`, the writing side of a store that the collection runner is typed against;
- `costs`: `OffloadCost` and `model_cost`, what the offloading what-if charges (from a config dict);
- `registry`: `Registry`, the named tables at the extension points (cache policies, predictors,
  importers), with name patterns such as ``lookahead-<L>`` and lookup errors listing valid names.
"""
