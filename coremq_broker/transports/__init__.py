"""The ways bytes reach the core: TCP (``tcp``) and browsers' WebSockets (``websocket``)."""
