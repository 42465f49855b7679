"""`python -m cqrs_core` is the same as `cqrs-console`."""

import sys

from cqrs_core.cli import main

sys.exit(main())
