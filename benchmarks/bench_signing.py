"""Micro-benchmark: microseconds per `Signer.sign` for a typical DLF start request.

Run with ``.venv/bin/python benchmarks/bench_signing.py``. Prints the best of several runs
(the least disturbed by other processes) for a plain path and for one that needs encoding.
"""

from __future__ import annotations

import timeit

from launcher.dlf.signing import AkSk, Signer

__all__ = ["main"]

_BODY = b'{"jobParams":[{"name":"bizdate","value":"20241030","paramType":"variable"}]}'


def _bench(signer: Signer, path: str, number: int = 20_000, repeat: int = 5) -> float:
    def one() -> None:
        # A fresh dict per request, as the dispatcher builds one per attempt.
        headers = {
            "Content-Type": "application/json;charset=UTF-8",
            "workspace": "a0b1c2d3e4f5",
            "X-Project-Id": "0123456789abcdef0123456789abcdef",
            "User-Agent": "launcher/0.1",
        }
        signer.sign("POST", "dayu-dlf.cn-north-4.myhuaweicloud.com", path, (), headers, _BODY)

    return min(timeit.repeat(one, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    """Print µs per sign for a plain and an encoded job name."""
    signer = Signer(AkSk("HPUAXXXXXXXXXXXXXXXX", "s" * 40))
    project = "0123456789abcdef0123456789abcdef"
    plain = f"/v1/{project}/jobs/daily_orders_load-01/start"
    encoded = f"/v1/{project}/jobs/%E8%AE%A2%E5%8D%95%20daily%2Fload/start"
    print(f"sign, plain job name:   {_bench(signer, plain):.2f} µs")
    print(f"sign, encoded job name: {_bench(signer, encoded):.2f} µs")


if __name__ == "__main__":
    main()
