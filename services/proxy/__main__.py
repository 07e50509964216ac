"""`python -m services.proxy`: the stream proxy viewers watch through (DESIGN §10)."""

import sys

from services.proxy.server import serve
from shared.service import run

if __name__ == "__main__":
    sys.exit(run("proxy", serve))
