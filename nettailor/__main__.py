import sys

from nettailor.cli import main

sys.exit(main())
