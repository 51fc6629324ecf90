"""Make the top-level scripts importable from the tests (the project is flat, not a package)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
