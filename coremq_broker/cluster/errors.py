"""The cluster engine's errors: under the project's one root, beside the stdlib error they resemble."""

from __future__ import annotations

from coremq_client.errors import CoreMQError

__all__ = ["ClusterUnavailable"]


class ClusterUnavailable(CoreMQError, ConnectionError):
    """Redis did not take or answer a command: nothing of it may be taken as done.

    Its text is the reason a broker sends as ``ERROR: <text>`` (a publish is
    then neither numbered nor delivered anywhere, as far as this node knows).
    """
