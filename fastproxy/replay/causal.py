"""Causal order across connections, planned as the capture is read: what each command waits for
and which events it is. The planner runs once per command read, so it is compiled:
fastproxy/replay/_causal.pyx holds it and says what it orders and why."""
from fastproxy.replay._causal import (IN_TXN, ORDER_UNKNOWN, PIN_ID, PIN_PREFIX, PIN_TIME, PLAIN_READ, PROD_LOCK_ERROR,
                                      READ_EVENT, TXN_BEGIN, TXN_CHAINED, TXN_END, Planner)

__all__ = ["IN_TXN", "ORDER_UNKNOWN", "PIN_ID", "PIN_PREFIX", "PIN_TIME", "PLAIN_READ", "PROD_LOCK_ERROR",
           "READ_EVENT", "TXN_BEGIN", "TXN_CHAINED", "TXN_END", "Planner",
           "head_ticket"]


def head_ticket(conn, rec):
    """The causal Ticket of `rec` while it is `conn`'s head command (answers come in order), or None."""
    tickets, queue = getattr(conn, "tickets", None), getattr(conn, "queue", None)
    return tickets[0] if tickets and queue and queue[0] is rec else None
