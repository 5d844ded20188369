"""``python -m pipeline.viewer --workspace W``: the live viewer (``run.py view`` calls the same)."""
import sys

from pipeline.viewer.server import main

sys.exit(main())
