"""`python -m services.provisioner`: keeps the engine pool between its floors and MAX_REPLICAS."""

import sys

from shared.service import run
from services.provisioner.provisioner import serve

if __name__ == "__main__":
    sys.exit(run("provisioner", serve))
