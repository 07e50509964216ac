"""acesim: a simulated AceStream engine (see acesim.py)."""
