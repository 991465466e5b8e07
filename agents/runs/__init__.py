"""The run record (trace events, live updates, the stop primitive) and the runs pages."""
