"""`python -m services.state_keeper`: the single writer of engine and stream records."""

import sys

from shared.service import run
from services.state_keeper.keeper import serve

if __name__ == "__main__":
    sys.exit(run("state-keeper", serve))
