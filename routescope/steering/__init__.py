"""routescope.steering."""
