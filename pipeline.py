"""Private Evolution's command line from a checkout: ``python pipeline.py COMMAND`` (installed: ``privevo COMMAND``)."""

import sys

from privevo.cli import main

if __name__ == "__main__":
    sys.exit(main())
