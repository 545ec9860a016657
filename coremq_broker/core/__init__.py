"""The Django-free core of CoreMQ: the broker as a library.

Nothing here imports Django or a transport; the Django app (``coremq_broker``)
and the transports (``coremq_broker.transports``) are built around it.
"""
