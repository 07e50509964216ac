"""The janitor: empties idle engines' caches (DESIGN §5, Cache cleanup)."""
