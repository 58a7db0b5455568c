"""Entry point for ``python test/fakecloud ...``: make ``fakecloud`` importable, then run."""

import os
import sys

if __package__ in (None, ""):
    # Run as a directory, Python put this directory first on the path; replace it
    # by its parent (test/) so the modules import as the package ``fakecloud``.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from fakecloud.cli import main

sys.exit(main())
