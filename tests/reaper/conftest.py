"""`pools(**settings)`: a state-keeper, the prober and local acesim engines on the test's nats-server."""

from pool_harness import pools  # noqa: F401 (the fixture lives with the harness)
