"""A relay in front of PostgreSQL's Unix socket that can hold back the end of a connection.

When the server ends a connection told to hold its end, the relay passes on
everything the server sent but keeps the client's side open, as a network
does that has delivered the server's last message and not yet its close: the
client reads the server's farewell error but cannot know the connection is
gone. That is the moment a PostgreSQL restart catches some of a pool's idle
connections in. Other connections end as they would without the relay.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# PostgreSQL's socket file in its socket directory, for its default port.
SOCKET_NAME = ".s.PGSQL.5432"
# Relays between yields to the event loop before until_read gives up.
MAX_TURNS = 10_000


class RelayedConnection:
    """One client connection through the relay."""

    def __init__(self, to_client: asyncio.StreamWriter) -> None:
        self._to_client = to_client
        self._holds_end = False
        # Set when the server has ended a connection that holds its end.
        self.server_ended = asyncio.Event()

    def hold_end(self) -> None:
        """From now on, when the server ends this connection, keep the client's side open."""
        self._holds_end = True

    async def until_read(self) -> None:
        """Return once the client has read everything relayed to it."""
        for _ in range(MAX_TURNS):
            if self._unread_bytes() == 0:
                return
            await asyncio.sleep(0)  # the client reads in this event loop
        raise AssertionError("the client did not read what the server sent")

    def _unread_bytes(self) -> int:
        # On a Unix stream socket, what was sent and not yet read by the peer (Linux).
        sock = self._to_client.get_extra_info("socket")
        unread: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        return unread


class HalfOpenRelay:
    """Listens in `directory`; relays to the PostgreSQL whose socket directory `server_dsn` names."""

    def __init__(self, directory: Path, server_dsn: str) -> None:
        self._directory = directory
        self._server_path = str(Path(dict(parse_qsl(urlsplit(server_dsn).query))["host"]) / SOCKET_NAME)
        # In the order the clients connected.
        self.connections: list[RelayedConnection] = []
        self._relays: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    def dsn(self, server_dsn: str) -> str:
        """`server_dsn` through the relay."""
        parts = urlsplit(server_dsn)
        query = {**dict(parse_qsl(parts.query)), "host": str(self._directory)}
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def __aenter__(self) -> HalfOpenRelay:
        self._server = await asyncio.start_unix_server(self._accept, path=self._directory / SOCKET_NAME)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for relay in self._relays:
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, from_client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        connection = RelayedConnection(to_client)
        self.connections.append(connection)
        try:
            from_server, to_server = await asyncio.open_unix_connection(self._server_path)
            client_done = asyncio.create_task(_copy(from_client, to_server))
            try:
                await _copy(from_server, to_client, close=False)
                if connection._holds_end:
                    connection.server_ended.set()
                    # Open until the client closes its side.
                    await client_done
            finally:
                client_done.cancel()
        finally:
            to_client.close()
            self._relays.discard(relay)


async def _copy(source: asyncio.StreamReader, target: asyncio.StreamWriter, *, close: bool = True) -> None:
    """Everything `source` sends, to `target`; then `target` closed, unless told not to."""
    try:
        while data := await source.read(65536):
            target.write(data)
            await target.drain()
    except ConnectionError:
        pass  # the other side is gone: so is this direction
    finally:
        if close:
            target.close()
