"""The reaper: removes idle engines above the floors and replaces long-unhealthy ones (DESIGN §5)."""
