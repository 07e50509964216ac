"""`python -m services.prober`: health probes for every engine, shared across replicas."""

import sys

from services.prober.prober import serve
from shared.service import run

if __name__ == "__main__":
    sys.exit(run("prober", serve))
