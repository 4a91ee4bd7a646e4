import sys

from gateway.cli import main

# Guarded: ``audit verify`` starts worker processes by spawning, and a spawned child imports this module again.
if __name__ == "__main__":
    sys.exit(main())
