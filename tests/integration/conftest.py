"""Integration tests: no network, readable output, and one torch thread on this shared machine."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

# the machine is shared: one intra-op thread keeps these tiny-model tests from oversubscribing it
torch.set_num_threads(1)
