"""Benchmarks: our hot paths held against what NATS itself does on this machine, in the same run.

`python -m tests.bench` runs every benchmark in sequence and prints one
summary table; each one also runs alone (`python -m tests.bench.selection`).
They are not tests: nothing here is collected by pytest. Every benchmark
starts its own nats-server (venv binary, free loopback port, temporary
store) and its services as subprocesses, and stops all of them by pid.
"""
