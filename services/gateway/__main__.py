"""`python -m services.gateway`: the HTTP API, the dashboard and /metrics on GATEWAY_PORT."""

import sys

from services.gateway.server import serve
from shared.service import run

if __name__ == "__main__":
    sys.exit(run("gateway", serve))
