"""Fixtures for the core tests."""

from __future__ import annotations

import sys
from pathlib import Path

# The driver modules sit beside this file; make them importable whatever the import mode.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
