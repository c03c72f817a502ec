"""The data plane: HTTP/1.1 on both sides of the proxy, on connections we own.

* ``wire``: pure byte-level helpers: response and request heads, the framing
  a response gets towards the client, the proxy's own small answers.
* ``front``: one ``asyncio.Protocol`` per client connection, parsed with
  httptools (llhttp), with every limit and timer of the front door.
* ``pool``: per-server keep-alive connections to upstreams, parsed with the
  same parser, and the one-off connections WebSocket handshakes use.

Why not aiohttp here (docs/design.md, "The data plane is our own"): its
client and server cost ~370 µs per proxied request, their limits and timers
are not a proxy's, and taking a connection over after ``101`` needed its
private names.  aiohttp still serves the admin listener, the demo and tests.
"""
