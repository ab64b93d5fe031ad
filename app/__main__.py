"""`python -m app`, and the packaged executable's entry point (build/latentdesk.spec)."""

import sys

from app.main import main

if __name__ == "__main__":
    sys.exit(main())
