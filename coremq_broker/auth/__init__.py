"""Django's side of authentication: API tokens, the authenticator, and the access policy snapshot.

- :mod:`.tokens`: making, hashing and recognising API tokens (no Django);
- :mod:`.authenticator`: ``authenticate(credentials)``, the coroutine given to
  ``Broker(authenticator=...)``: a token or a username and password in, a
  :class:`~coremq_broker.core.access.Principal` (or None) out, the ORM off the loop;
- :mod:`.policy`: the ``PermissionRule`` rows, ``COREMQ['DEFAULT_POLICY']``
  and the revoked tokens and inactive users as one immutable
  :class:`~coremq_broker.core.access.RulePolicy`, followed by a watcher thread.

The broker (``coremq_broker.core.access``) never imports any of it. The model is
described in ``docs/security.md``.
"""
