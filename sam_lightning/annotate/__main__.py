"""``python -m sam_lightning.annotate``: see :mod:`sam_lightning.annotate.cli`."""

import sys

from sam_lightning.annotate.cli import main

sys.exit(main())
