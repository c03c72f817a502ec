"""Upstreams at run time: each one's servers, their pools, balancer and health.

Pure parts: ``balancer`` (server choice) and ``health`` (what attempts
said); ``servers`` puts them together with each server's pool.

One :class:`~.servers.Upstreams` per configuration owns every server the configuration
names: a :class:`~.servers.Group` per upstream (its settings, servers and balancer) and
a :class:`~.servers.Server` per address (its keep-alive pool).  The request paths ask a
group for a server and tell the upstreams how the attempt went; the
observability hub hears of outcomes only through :class:`~.health.HealthEvents`.
"""
