import sys

from infleet.cli import main

sys.exit(main())
