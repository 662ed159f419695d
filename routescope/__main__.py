"""`python -m routescope …`: the same entry point as the `routescope` command."""

from routescope.cli import main

main()
