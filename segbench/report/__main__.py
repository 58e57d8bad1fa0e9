import sys

from segbench.report import main

sys.exit(main())
