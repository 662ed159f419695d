"""Importing routing traces recorded by other engines (vLLM, SGLang, Megatron-Core, FLAME-MoE-Traces,
moe-lrc) as routescope runs (DESIGN.md §8). `import_trace` is the entry point; `FORMATS` lists
the formats; each format is one module with a `read(paths, opts)` generator of whole sequences."""

from routescope.importers.base import ImportedSequence, ImportFileError, ModelInfo, ReadOptions
from routescope.importers.driver import ImportResult, import_trace
from routescope.importers.registry import FORMATS, get_format

__all__ = [
    "FORMATS",
    "ImportFileError",
    "ImportResult",
    "ImportedSequence",
    "ModelInfo",
    "ReadOptions",
    "get_format",
    "import_trace",
]
