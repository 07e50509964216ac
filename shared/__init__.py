"""The contract in code: schemas, names, config, bus helpers and pure policy."""
