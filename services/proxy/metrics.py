"""The proxy's Prometheus metrics (default registry; served at GET /metrics on the proxy port)."""

from prometheus_client import Counter, Gauge, Histogram

END_REASONS = (
    "viewers_left",
    "failover",
    "failover_exhausted",
    "proxy_stopped",
    "start not acknowledged",
    "engine_failed",
)

REQUESTS = Counter("ace_proxy_requests", "Viewer HTTP requests by path and status", ["path", "code"])
VIEWERS = Gauge("ace_proxy_viewers", "Viewer connections receiving a stream now")
CHANNELS = Gauge("ace_proxy_channels", "Channels (one upstream engine session each) open now")
BYTES_IN = Counter("ace_proxy_upstream_bytes", "MPEG-TS bytes read from engines")
BYTES_OUT = Counter("ace_proxy_viewer_bytes", "MPEG-TS bytes written to viewers")
DROPPED = Counter("ace_proxy_viewers_dropped", "Viewers disconnected because they fell further behind than the buffer")
FAILOVERS = Counter("ace_proxy_failovers", "Streams moved to another engine, by reason", ["reason"])
STREAMS_STARTED = Counter("ace_proxy_streams_started", "stream.started published")
STREAMS_ENDED = Counter("ace_proxy_streams_ended", "stream.ended published, by reason", ["reason"])
HLS_BYTES = Counter("ace_proxy_hls_segment_bytes", "HLS segment bytes relayed from engines to viewers")
STAT_ERRORS = Counter("ace_proxy_stat_errors", "Stat URL reads that failed or made no sense")
FIRST_BYTE = Histogram(
    "ace_proxy_first_byte_seconds",
    "From a viewer's request to the first stream byte sent to it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
