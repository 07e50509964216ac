"""Prometheus metrics for any service (`METRICS_PORT`)."""

from __future__ import annotations

from prometheus_client import start_http_server


def serve_metrics(host: str, port: int) -> None:
    """Serve the default registry in a daemon thread; it ends with the process."""
    start_http_server(port, addr=host)
