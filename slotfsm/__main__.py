"""``python -m slotfsm``: the same as the ``slotfsm`` command."""

import sys

from slotfsm.cli import main

sys.exit(main())
