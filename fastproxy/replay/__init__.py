"""Replay: stream a capture and send its commands to a test database on the captured schedule."""
