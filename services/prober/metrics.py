"""The prober's Prometheus metrics (default registry; served when METRICS_PORT is set)."""

from prometheus_client import Counter, Gauge, Histogram

PROBES = Counter("ace_prober_probes", "Engine health probes by result (ok or the error kind)", ["result"])
PROBE_LATENCY = Histogram(
    "ace_prober_probe_latency_seconds",
    "Time from sending get_status to the verdict (a timeout counts its full wait)",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PUBLISH_FAILURES = Counter("ace_prober_publish_failures", "engine.health observations that could not be published")
ENGINES_OWNED = Gauge("ace_prober_engines_owned", "Engines this replica probes (its rendezvous share)")
MEMBERS = Gauge("ace_prober_members", "Live prober replicas, this one included")
RESCUES = Counter(
    "ace_prober_rescues", "One-off probes of engines whose owner stayed silent (shared.policy.partition.overdue)"
)
