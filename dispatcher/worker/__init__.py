"""The streaming dispatcher: a Faust worker around the pure core (see app.py)."""
