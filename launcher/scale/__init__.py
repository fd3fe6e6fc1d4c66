"""Several launchers as one: a rate limit, adaptive curve and concurrency shared in Redis.

`open_shared_limits` (in `limits`) is the entry point `launcher run --redis`
uses. The package does not import it eagerly: redis-py loads only when a run
asks for Redis.
"""

from __future__ import annotations

__all__: list[str] = []
