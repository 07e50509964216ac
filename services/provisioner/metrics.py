"""The provisioner's Prometheus metrics (default registry; served when METRICS_PORT is set)."""

from prometheus_client import Counter, Gauge

STARTED = Counter("aceorch_provisioner_engines_started_total", "Engines started that answered get_status")
FAILED = Counter("aceorch_provisioner_engine_starts_failed_total", "Failed starts (create error, exit, timeout)")
ADOPTED = Counter("aceorch_provisioner_engines_adopted_total", "Running engines registered at start-up or as orphans")
REMOVED = Counter("aceorch_provisioner_engines_removed_total", "engine.removed published, by reason", ["reason"])
STARTING = Gauge("aceorch_provisioner_engines_starting", "Engines this replica started that do not answer yet")
