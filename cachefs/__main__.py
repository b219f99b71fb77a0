import sys

from cachefs.cli.main import main

sys.exit(main())
