"""`python -m services.gateway`: the HTTP API, the dashboard and /metrics on GATEWAY_PORT."""

import sys

from shared.service import run
from services.gateway.server import serve

if __name__ == "__main__":
    sys.exit(run("gateway", serve))
