"""The Channels tutorial's chat room, as a project of its own, for the channel layer tests and benchmarks.

Its channel layer comes from the environment as the whole ``CHANNEL_LAYERS``
setting (``CHAT_CHANNEL_LAYERS``, JSON): switching from ``channels_redis`` to
CoreMQ changes that setting and nothing else.
"""
