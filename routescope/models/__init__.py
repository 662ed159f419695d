"""routescope.models."""
