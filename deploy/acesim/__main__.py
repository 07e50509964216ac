"""Run acesim: `python -m deploy.acesim` or `python3 path/to/deploy/acesim`."""

import sys

if __package__:  # python -m deploy.acesim
    from .acesim import main
else:  # python3 path/to/deploy/acesim: this directory is sys.path[0]
    from acesim import main  # type: ignore[no-redef,import-not-found]  # mypy reads this file as the package

sys.exit(main())
