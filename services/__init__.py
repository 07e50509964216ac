"""One package per service; each runs as `python -m services.<name>`."""
