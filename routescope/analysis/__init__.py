"""routescope.analysis."""
