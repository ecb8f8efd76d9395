"""Read-only statements: moved to fastproxy/statements.py (capture's filters use it too)."""
from fastproxy.statements import is_read_only

__all__ = ["is_read_only"]
