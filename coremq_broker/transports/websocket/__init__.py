"""Browsers as CoreMQ clients: a WebSocket endpoint bridged to the broker.

- :mod:`.protocol`: the browser's JSON frames, parsed and built without I/O;
- :mod:`.bridge`: one link to the broker per web process, fanned out locally;
- :mod:`.links`: that link in-process (inside ``run_coremq``) or remote;
- :mod:`.consumer`: the Channels consumer, one per WebSocket;
- :mod:`.routing`: ``/ws/coremq/`` behind the origin check and the session user.

The JavaScript client is ``static/coremq/coremq.js``; the protocol is in
``docs/websocket.md``. Importing this package loads nothing (the submodules
need Django's settings).
"""
