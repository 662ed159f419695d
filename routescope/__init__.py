"""routescope: record, analyse and steer the routing of Mixture-of-Experts language models."""

__version__ = "0.1.0"
