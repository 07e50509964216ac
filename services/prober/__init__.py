"""The prober: probes every engine's health and reports `engine.health` observations (DESIGN §5)."""
