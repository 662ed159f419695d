"""routescope.models.adapters."""
