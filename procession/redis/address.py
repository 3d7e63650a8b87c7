"""
Where procession's Redis is: a C{redis://}, C{rediss://}, C{unix://} or
C{sentinel://} URL, parsed once into a L{RedisAddress}.
"""

from __future__ import annotations

from attrs import frozen

from urllib.parse import parse_qs, unquote, urlparse


@frozen
class RedisAddress:
    """
    Where Redis is, parsed from a C{redis://}, C{rediss://}, C{unix://} or
    C{sentinel://} URL.

    @ivar sentinels: for Redis Sentinel, the sentinels' (host, port) pairs;
        C{master} is then the name of the master they watch, and the
        connection follows it through failovers.
    @ivar sentinel_username: the ACL user to authenticate to the sentinels
        as, if they need one (C{username} is the master's).
    @ivar sentinel_password: the sentinels' own password (their
        C{requirepass}), if they need one (C{password} is the master's).
    """

    host: str | None = None
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def tcp_host(self) -> str:
        """
        The host to connect to over TCP.

        @raise ValueError: the address names none (a socket path, or
            sentinels).
        """
        if not self.host:
            raise ValueError("this Redis address has no host")
        return self.host

    def master_name(self) -> str:
        """
        The name of the master the sentinels watch.

        @raise ValueError: the address names none (no sentinels).
        """
        if not self.master:
            raise ValueError("this Redis address names no Sentinel master")
        return self.master

    @classmethod
    def from_url(cls, url: str) -> "RedisAddress":
        """
        Parse C{redis://[user:password@]host[:port][/db]},
        C{rediss://...} (TLS), C{unix:///path/to/socket[?db=N]} or
        C{sentinel://[[user:]password@]host[:port],host[:port].../master[/db]
        [?sentinel_password=...[&sentinel_username=...]]} (the user and
        password before C{@} are the master's, the query's are the
        sentinels' own; sentinels listen on 26379 unless told).  User
        names and passwords are percent-decoded (C{%40} for C{@}, C{%26}
        for C{&}, ...); C{+} stays C{+}.

        @raise ValueError: with a message fit for the command line.
        """
        if url.startswith("sentinel://"):
            return cls._from_sentinel_url(url)
        parsed = urlparse(url)
        user = unquote(parsed.username) if parsed.username else None
        password = unquote(parsed.password) if parsed.password else None
        if parsed.scheme == "unix":
            if not parsed.path:
                raise ValueError("a unix:// Redis URL needs a socket path")
            db = parse_qs(parsed.query).get("db", ["0"])[0]
            return cls(path=parsed.path, db=_db(db), username=user, password=password)
        if parsed.scheme not in ("redis", "rediss"):
            raise ValueError(
                "the Redis URL must start with redis://, rediss:// or unix://"
            )
        if not parsed.hostname:
            raise ValueError("the Redis URL needs a host")
        return cls(
            host=parsed.hostname,
            port=parsed.port or 6379,
            db=_db(parsed.path.strip("/") or "0"),
            username=user,
            password=password,
            tls=parsed.scheme == "rediss",
        )

    @classmethod
    def _from_sentinel_url(cls, url: str) -> "RedisAddress":
        rest, _, _ = url[len("sentinel://") :].partition("#")
        rest, _, query = rest.partition("?")
        credentials: dict[str, str] = {}
        for pair in query.split("&") if query else ():
            key, equals, value = pair.partition("=")
            if key not in ("sentinel_password", "sentinel_username") or not equals:
                raise ValueError(
                    f"unknown parameter {key!r} in the sentinel:// Redis URL "
                    "(known: sentinel_password=..., sentinel_username=...)"
                )
            credentials[key] = unquote(value)
        if "sentinel_username" in credentials and not credentials.get(
            "sentinel_password"
        ):
            raise ValueError(
                "sentinel_username in the Redis URL needs sentinel_password"
            )
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        user = password = None
        if at:
            name, colon, secret = userinfo.partition(":")
            if colon:
                user = unquote(name) or None
                password = unquote(secret)
            else:
                password = unquote(name)
        sentinels = []
        for host in hosts.split(","):
            name, colon, port = host.strip().rpartition(":")
            if not colon:
                name, port = port, "26379"
            name = name.strip("[]")
            if not name or not port.isdigit():
                raise ValueError(f"bad sentinel address {host!r} in the Redis URL")
            sentinels.append((name, int(port)))
        master, _, db = path.strip("/").partition("/")
        if not master:
            raise ValueError(
                "a sentinel:// Redis URL needs the master's name: "
                "sentinel://host:26379,host:26379/mymaster/0"
            )
        return cls(
            db=_db(db or "0"),
            username=user,
            password=password,
            sentinels=tuple(sentinels),
            master=unquote(master),
            sentinel_username=credentials.get("sentinel_username") or None,
            sentinel_password=credentials.get("sentinel_password") or None,
        )

    def describe(self) -> str:
        """
        The address for logs: never the password.
        """
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel://{hosts}/{self.master}/{self.db}"
        if self.path:
            return f"unix:{self.path} db {self.db}"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError("the Redis database must be a number")
    return int(text)
