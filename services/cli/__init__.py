"""The `aceorch` command: `up` runs the whole system locally; the rest talk to it over NATS."""
