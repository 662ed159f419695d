from routescope.cli import main

main()
