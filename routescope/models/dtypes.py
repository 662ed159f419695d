"""The dtypes a model can be loaded in: one list for job specs and ``load_model`` (no torch here)."""

#: "auto" keeps the checkpoint's own dtype
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
