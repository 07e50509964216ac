"""`python -m services.state_keeper`: the single writer of engine and stream records."""

import sys

from services.state_keeper.keeper import serve
from shared.service import run

if __name__ == "__main__":
    sys.exit(run("state-keeper", serve))
