"""The simulated fleet behind ``make demo``: it drives the console through the client only."""
