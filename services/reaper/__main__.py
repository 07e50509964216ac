"""`python -m services.reaper`: removes idle engines above the pool floors and replaces long-unhealthy ones."""

import sys

from services.reaper.reaper import serve
from shared.service import run

if __name__ == "__main__":
    sys.exit(run("reaper", serve))
