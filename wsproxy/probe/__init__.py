"""``wsproxy probe``: a handshake doctor for any WebSocket URL.

It opens the handshakes real clients and proxies send (HTTP/1.1 and 1.0,
``Connection: Upgrade`` and Firefox's ``keep-alive, Upgrade``, with and
without ``permessage-deflate``), holds each session a short window with a
ping and a message, and says in plain words what the server does with each
form, and why a chain of proxies in front of it may lose sessions.

``model`` is pure (variants, requests, response heads, outcomes, the
diagnosis); ``report`` renders it; ``client`` is the only part with sockets.
"""
