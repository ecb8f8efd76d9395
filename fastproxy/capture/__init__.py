"""Traffic capture: record codec, ring-buffer writer thread, file reader, inspector.

The file format is specified in docs/traffic-format.md.
"""
