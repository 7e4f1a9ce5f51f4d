"""`python -m edit_rlhf ...` (the entrypoint `ray job submit` runs)."""
import sys

from edit_rlhf.cli import main

if __name__ == "__main__":  # vLLM's engine processes re-import the main module: keep this guard
    sys.exit(main())
