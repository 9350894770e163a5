import sys

from nettailor.cli import main

if __name__ == "__main__":  # a spawned child (the executor process) imports this module without running it
    sys.exit(main())
