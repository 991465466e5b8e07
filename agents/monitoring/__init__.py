"""Watching the fleet: rollups, drift, replay and golden runs, charts, exports and /metrics."""
