from fastproxy.report._latency import LatencyTable

class VerdictCore:
    _by_text: dict
    latency: LatencyTable
    other_slot: int
    other_commands: int
    compared: int
