"""`python -m services.provisioner`: keeps the engine pool between its floors and MAX_REPLICAS."""

import sys

from services.provisioner.provisioner import serve
from shared.service import run

if __name__ == "__main__":
    sys.exit(run("provisioner", serve))
