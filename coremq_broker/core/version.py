"""The release of CoreMQ and the protocol version its welcome announces."""

VERSION = "0.1.0"
PROTOCOL_VERSION = 2
