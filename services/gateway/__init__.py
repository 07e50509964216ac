"""The HTTP face of the fleet: API, live dashboard, metrics; no state of its own."""
