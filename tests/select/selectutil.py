"""Helpers shared by the tests of this directory (a unique module name: `conftest` is ambiguous
when several test directories run in one process)."""

import os

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
