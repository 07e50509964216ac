"""`python -m services.janitor`: empties idle engines' caches (on engine.idle and every AUTOSCALE_INTERVAL_S)."""

import sys

from services.janitor.janitor import serve
from shared.service import run

if __name__ == "__main__":
    sys.exit(run("janitor", serve))
