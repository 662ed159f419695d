"""routescope.collect."""
