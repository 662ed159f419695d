"""The demo MoE model shipped with routescope: a small OLMoE-style model trained on five domains.

``DEMO_MODEL_PATH`` is a directory loadable offline with ``AutoModelForCausalLM.from_pretrained``
and ``AutoTokenizer.from_pretrained``; ``DEMO_PROMPTS_DIR`` holds its prompt sets (domains and
behaviours). Rebuild with ``python -m routescope.models.demo.train``; see MODEL_CARD.md.
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_PATH: Path = Path(__file__).resolve().parent / "model"
DEMO_PROMPTS_DIR: Path = Path(__file__).resolve().parents[3] / "collectors" / "demo"
DEMO_DOMAINS: tuple[str, ...] = ("python", "english", "german", "russian", "numbers")

__all__ = ["DEMO_DOMAINS", "DEMO_MODEL_PATH", "DEMO_PROMPTS_DIR"]
