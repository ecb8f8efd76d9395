"""Causal order across connections, planned as the capture is read: what each command waits for
and which events it is. The planner runs once per command read, so it is compiled:
fastproxy/replay/_causal.pyx holds it and says what it orders and why."""
from fastproxy.replay._causal import (IN_TXN, PIN_ID, PIN_PREFIX, PIN_TIME, PLAIN_READ, PROD_LOCK_ERROR, TXN_BEGIN,
                                      TXN_END, Planner)

__all__ = ["IN_TXN", "PIN_ID", "PIN_PREFIX", "PIN_TIME", "PLAIN_READ", "PROD_LOCK_ERROR", "TXN_BEGIN", "TXN_END",
           "Planner"]
