"""`python -m services.prober`: health probes for every engine, shared across replicas."""

import sys

from shared.service import run
from services.prober.prober import serve

if __name__ == "__main__":
    sys.exit(run("prober", serve))
