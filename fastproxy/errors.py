"""The exceptions fastproxy raises; logs say which side of the proxy failed."""


class FastproxyError(Exception):
    """Base of every fastproxy error."""


class ProtocolError(FastproxyError):
    """Bytes that do not follow the MySQL protocol (malformed, truncated, oversized)."""


class PacketTooLarge(ProtocolError):
    """A logical packet is larger than the configured limit."""


class ClientConnError(FastproxyError):
    """The client side of a proxied connection failed (reset, bad packet, timeout)."""


class BackendConnError(FastproxyError):
    """The backend side of a proxied connection failed (unreachable, reset, bad packet)."""


class HealthCheckFailed(BackendConnError):
    """A backend answered its health check, but not as a healthy server does (ERR greeting, refused login)."""


class ConfigError(FastproxyError):
    """A configuration value is missing or wrong; the message names the key."""


class TrafficFormatError(FastproxyError):
    """A traffic file is corrupt or of an unknown version; the message names file and offset."""


class JobError(FastproxyError):
    """A traffic job (capture, replay) cannot start or failed."""
