"""Several API keys, each with optional limits: requests per minute and requests in flight.

``aios serve --api-key KEY`` (repeatable) adds keys without limits; ``--api-key-file FILE``
reads one key a line, with optional settings after it::

    # key                 settings (all optional)
    sk-team-a             name=team-a rate=120 max-concurrency=8
    sk-batch-jobs         name=batch  max-concurrency=2
    sk-admin

``rate`` is requests per minute, enforced as a token bucket that holds one minute's
worth (a client may spend it in a burst, then gets one request every 60/rate seconds);
``max-concurrency`` caps the key's requests in flight (a stream counts until it ends).
Over either limit the server answers 429 with a ``Retry-After`` header (seconds).
``name`` is what the log shows instead of the key (default: "key-" and its line number).
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class APIKey:
    """One client's key and its limits (None: no limit)."""

    key: str
    name: str = ""
    rate: float | None = None  # requests per minute
    max_concurrency: int | None = None


class KeyFileError(ValueError):
    """A keys file line that cannot be read."""


def read_key_file(path: str | Path) -> list[APIKey]:
    """The keys of a keys file (format in the module docstring); raises KeyFileError naming the bad line."""
    keys = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        settings = {}
        for word in words[1:]:
            name, sep, value = word.partition("=")
            if not sep or name not in ("name", "rate", "max-concurrency") or not value:
                raise KeyFileError(f"{path}:{number}: expected name=..., rate=N or max-concurrency=N, got {word!r}")
            settings[name] = value
        try:
            rate = float(settings["rate"]) if "rate" in settings else None
            concurrency = int(settings["max-concurrency"]) if "max-concurrency" in settings else None
        except ValueError:
            raise KeyFileError(f"{path}:{number}: rate and max-concurrency must be numbers") from None
        if (rate is not None and not (math.isfinite(rate) and rate > 0)) or (concurrency is not None
                                                                             and concurrency < 1):
            raise KeyFileError(f"{path}:{number}: rate and max-concurrency must be positive")
        keys.append(APIKey(words[0], settings.get("name", f"key-{number}"), rate, concurrency))
    return keys


class LimitExceeded(Exception):
    """A key is over one of its limits; ``retry_after`` is in whole seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Usage:
    tokens: float
    refilled: float
    in_flight: int = 0


@dataclass
class KeyRing:
    """The server's keys and what each is using now. Thread-safe (tests drive it from several threads)."""

    keys: list[APIKey]
    clock: object = time.monotonic
    _usage: dict[str, _Usage] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def find(self, token: str) -> APIKey | None:
        """The key equal to ``token`` (compared in constant time), or None."""
        found = None
        for key in self.keys:
            if hmac.compare_digest(token.encode(), key.key.encode()):
                found = key
        return found

    def acquire(self, key: APIKey, count: int = 1) -> None:
        """Count ``count`` requests of ``key`` in (a request with several prompts counts each);
        raise LimitExceeded if that goes over a limit (nothing counted then)."""
        with self._lock:
            now = self.clock()
            usage = self._usage.setdefault(key.key, _Usage(key.rate or 0.0, now))
            if key.max_concurrency is not None and usage.in_flight + count > key.max_concurrency:
                raise LimitExceeded(f"this API key may have {key.max_concurrency} requests in flight", 1)
            if key.rate is not None:
                per_second = key.rate / 60
                usage.tokens = min(key.rate, usage.tokens + (now - usage.refilled) * per_second)
                usage.refilled = now
                if usage.tokens < count:
                    wait = math.ceil((count - usage.tokens) / per_second)
                    raise LimitExceeded(f"this API key may send {key.rate:g} requests per minute", wait)
                usage.tokens -= count
            usage.in_flight += count

    def release(self, key: APIKey, count: int = 1) -> None:
        """``count`` requests counted in by ``acquire`` have ended."""
        with self._lock:
            self._usage[key.key].in_flight -= count
