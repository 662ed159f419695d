"""`routescope analyze …`: one module per analysis, each a thin shell over routescope.analysis."""

from routescope.cli.analyze import (  # noqa: F401  (imported for their command registrations)
    cache,
    consistency,
    prefetch,
    saturation,
    specialization,
)
