"""Prometheus metrics. The per-command counters live in the data plane's workers (C, one block per
thread, fastproxy/csrc/dp.h); the control plane's (accepts, refusals, handshakes) in ProxyStats. A
Collector sums them into metric families when /metrics is scraped."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from fastproxy.constants import command_name

if TYPE_CHECKING:
    from fastproxy.proxy.backend import BackendPool

# command latency buckets, in nanoseconds (upper bounds)
LATENCY_BOUNDS_NS = [int(s * 1e9) for s in (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                             0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)]


class ProxyStats:
    """Counters of the control plane (Python, once per connection), and the per-command ones of the
    connections relayed in Python (TLS; fastproxy/proxy/connection.py), summed with the workers'."""

    def __init__(self) -> None:
        self.connections = 0
        self.connections_total = 0
        self.connections_rejected = 0
        self.protocol_errors = 0  # during handshakes, and of connections relayed in Python
        self.bytes_from_clients = 0
        self.bytes_to_clients = 0
        self.commands = [0] * 256
        self.command_errors = [0] * 256
        # latency_buckets[bisect_left(LATENCY_BOUNDS_NS, ns)] is bumped inline by the connection
        self.latency_buckets = [0] * (len(LATENCY_BOUNDS_NS) + 1)
        self.latency_sum_ns = 0


EMPTY_RELAY_STATS = {"bytes_from_clients": 0, "bytes_to_clients": 0, "latency_sum_ns": 0, "protocol_errors": 0,
                     "commands": [0] * 256, "command_errors": [0] * 256,
                     "latency_buckets": [0] * (len(LATENCY_BOUNDS_NS) + 1), "worker_connections": []}


class Collector:
    def __init__(self, stats: ProxyStats, pool: "BackendPool", extra: list[Callable[[], Iterable]],
                 dataplane: Any = None) -> None:
        self.stats = stats
        self.pool = pool
        self.extra = extra
        self.dataplane = dataplane  # fastproxy._dataplane.DataPlane: stats() sums its workers' counters

    def collect(self):
        s = self.stats
        d = self.dataplane.stats() if self.dataplane is not None else EMPTY_RELAY_STATS
        d = dict(d, bytes_from_clients=d["bytes_from_clients"] + s.bytes_from_clients,
                 bytes_to_clients=d["bytes_to_clients"] + s.bytes_to_clients,
                 latency_sum_ns=d["latency_sum_ns"] + s.latency_sum_ns,
                 commands=[a + b for a, b in zip(d["commands"], s.commands)],
                 command_errors=[a + b for a, b in zip(d["command_errors"], s.command_errors)],
                 latency_buckets=[a + b for a, b in zip(d["latency_buckets"], s.latency_buckets)])
        yield GaugeMetricFamily("fastproxy_connections", "Client connections open now", value=s.connections)
        yield CounterMetricFamily("fastproxy_connections", "Client connections accepted", value=s.connections_total)
        yield CounterMetricFamily("fastproxy_connections_rejected", "Client connections refused (max-connections, no backend)",
                                  value=s.connections_rejected)
        yield CounterMetricFamily("fastproxy_protocol_errors", "Connections closed for malformed or oversized packets",
                                  value=s.protocol_errors + d["protocol_errors"])
        yield CounterMetricFamily("fastproxy_received_bytes", "Bytes received from clients", value=d["bytes_from_clients"])
        yield CounterMetricFamily("fastproxy_sent_bytes", "Bytes sent to clients", value=d["bytes_to_clients"])
        cmds = CounterMetricFamily("fastproxy_commands", "Commands by type", labels=["type"])
        errs = CounterMetricFamily("fastproxy_command_errors", "Commands that ended in ERR, by type", labels=["type"])
        for cmd, n in enumerate(d["commands"]):
            if n:
                cmds.add_metric([command_name(cmd)], n)
            if d["command_errors"][cmd]:
                errs.add_metric([command_name(cmd)], d["command_errors"][cmd])
        yield cmds
        yield errs
        buckets, acc = [], 0
        for bound, n in zip(LATENCY_BOUNDS_NS + [None], d["latency_buckets"]):
            acc += n
            buckets.append(("+Inf" if bound is None else repr(bound / 1e9), acc))
        yield HistogramMetricFamily("fastproxy_command_duration_seconds", "Command latency, first byte in to last byte out",
                                    buckets=buckets, sum_value=d["latency_sum_ns"] / 1e9)
        workers = GaugeMetricFamily("fastproxy_worker_connections", "Relayed connections per data-plane worker",
                                    labels=["worker"])
        for i, n in enumerate(d["worker_connections"]):
            workers.add_metric([str(i)], n)
        yield workers
        if self.dataplane is not None:
            io = GaugeMetricFamily("fastproxy_worker_io", "1 for the I/O each data-plane worker runs on (proxy.io)",
                                   labels=["worker", "io"])
            for i, name in enumerate(self.dataplane.io):
                io.add_metric([str(i), name], 1)
            yield io
        healthy = GaugeMetricFamily("fastproxy_backend_healthy",
                                    "1 if the backend is taken to be up (last check, or what connections saw)",
                                    labels=["backend"])
        conns = GaugeMetricFamily("fastproxy_backend_connections", "Proxied connections per backend", labels=["backend"])
        checks = CounterMetricFamily("fastproxy_backend_health_checks",
                                     "Health checks (login mode) or probes (passive mode) made", labels=["backend"])
        failed = CounterMetricFamily("fastproxy_backend_health_check_failures", "Health checks or probes that failed",
                                     labels=["backend"])
        for b in self.pool.backends:
            healthy.add_metric([b.addr], 1 if b.healthy else 0)
            conns.add_metric([b.addr], b.connections)
            checks.add_metric([b.addr], b.checks)
            failed.add_metric([b.addr], b.check_failures)
        yield healthy
        yield conns
        yield checks
        yield failed
        for fn in self.extra:
            yield from fn()


def make_registry(stats: ProxyStats, pool: "BackendPool", extra: list[Callable[[], Iterable]] | None = None,
                  dataplane: Any = None):
    registry = CollectorRegistry()
    registry.register(Collector(stats, pool, extra or [], dataplane))
    return registry


def render(registry) -> bytes:
    return generate_latest(registry)
