"""``python -m vitzoo_hf.hub serve --root DIR``: same as ``vitzoo hub serve``."""

import sys

from .cli import main

sys.exit(main())
