import sys

from ebr.cli import main

sys.exit(main())
