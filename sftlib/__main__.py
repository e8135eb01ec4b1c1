import sys

from sftlib.cli import main

sys.exit(main())
