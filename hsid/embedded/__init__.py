"""Embedded stores: a private PostgreSQL cluster and redis-server under <state_dir>/embedded.

Used when neither the config nor the environment names a database or Redis URL. Both
servers listen on unix sockets only, belong to this hsid process (stopped on its exit
stack) and keep their data in the state dir. A hsid that was killed leaves them running
(outside systemd, whose cgroup kill ends them): the next start finds such leftovers by
their working directory, which cannot go stale the way a pid file can, and stops them.
"""

from hsid.embedded.postgres import PG_SOCKET_NAME, EmbeddedPostgres
from hsid.embedded.processes import (
    ServerUser,
    find_postgres_bin,
    find_redis_server,
    server_pids,
    server_user,
)
from hsid.embedded.redis_server import EmbeddedRedis
from hsid.embedded.server import socket_dir
from hsid.embedded.stores import (
    embedded_root,
    start_embedded_stores,
    store_modes,
    with_embedded_addresses,
)

__all__ = [
    "PG_SOCKET_NAME",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "ServerUser",
    "embedded_root",
    "find_postgres_bin",
    "find_redis_server",
    "server_pids",
    "server_user",
    "socket_dir",
    "start_embedded_stores",
    "store_modes",
    "with_embedded_addresses",
]
