"""The stream proxy: viewers watch through the NATS contract (DESIGN §10)."""
