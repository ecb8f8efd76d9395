"""fastproxy: a MySQL-protocol proxy that captures production traffic and replays it."""

__version__ = "0.1.0"
