"""The broker's live status: the admin page, ``/coremq/status.json``, ``/metrics`` and the page's actions.

``source`` reads the running broker (in this process, or over the protocol),
``views`` serves it, ``metrics`` renders it for Prometheus.
"""
