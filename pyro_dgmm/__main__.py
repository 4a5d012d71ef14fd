"""``python -m pyro_dgmm``: see :mod:`pyro_dgmm.cli`."""
import sys

from .cli import main

sys.exit(main())
