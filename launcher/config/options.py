"""The options, declared once: the fields of `RunOptions`, and `OPTIONS`, their table.

Each field made by `_option` (`launcher.config.spec`) is an option; the order of the
fields is the order of `--help`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from launcher.config.spec import (
    _CONNECT,
    _MANIFEST,
    _PACED,
    _RUN,
    _SERVICE,
    _SPEC,
    Option,
    _any_text,
    _duration,
    _flag,
    _halt,
    _header_safe,
    _non_negative_int,
    _option,
    _port,
    _positive_float,
    _positive_int,
    _rate,
    _shard,
    _text,
    _workers,
)
from launcher.flow.pacing import parse_rate
from launcher.ledger.writer import FsyncPolicy
from launcher.logs import LogFormat, redact_url
from launcher.manifest.validate import Format
from launcher.models import Action

__all__ = ["DEFAULT_RATE", "OPTIONS", "LogLevel", "ProgressMode", "RunOptions", "WaveFailures"]

# The documented per-user limit of the DLF API: the safe default for a real service.
DEFAULT_RATE = "30/s"

LogLevel = Literal["debug", "info", "warning", "error"]
ProgressMode = Literal["auto", "bar", "lines", "off"]
WaveFailures = Literal["stop", "continue"]


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything `launcher run` needs besides the manifest and the credentials.

    Each field made by `_option` is an option (see `launcher.config`).
    """

    endpoint: str | None = _option(
        None, _text, "DLF endpoint URL, or `sim` for the embedded simulator", commands=_CONNECT
    )
    region: str | None = _option(
        None,
        _header_safe,
        "Region id; derives the endpoint",
        commands=_CONNECT,
        env="HUAWEICLOUD_SDK_REGION",
    )
    project_id: str | None = _option(
        None,
        _header_safe,
        "Default project id",
        commands=_MANIFEST | {"snapshot"},
        env="HUAWEICLOUD_SDK_PROJECT_ID",
    )
    workspace: str | None = _option(
        None, _header_safe, "Default workspace for lines that name none", commands=_MANIFEST
    )
    ledger: str | None = _option(
        None, _text, "Ledger path", shown="ledgers/<manifest>-<UTC time>.jsonl"
    )
    resume: bool = _option(
        False,
        _flag,
        "Continue the run recorded in --ledger: settled jobs are skipped, "
        "jobs in doubt are checked with the service before any resend",
    )
    shard: str | None = _option(
        None,
        _shard,
        "Take the I-th of N disjoint parts of the manifest (0-based, by job identity)",
        commands=_RUN | {"validate"},
        metavar="I/N",
    )
    force: bool = _option(
        False,
        _flag,
        "Resume even if the manifest or the target (endpoint, project, workspace, action, "
        "shard) changed; replay to the source's own endpoint and project",
    )
    retry_failed: bool = _option(
        False, _flag, "On --resume, send permanent failures (DLF.* errors) again too"
    )
    concurrency: int = _option(64, _positive_int, "Most requests in flight at once")
    per_workspace: int = _option(
        0, _non_negative_int, "Most requests in flight per workspace", shown="no limit"
    )
    rate: float = _option(
        parse_rate(DEFAULT_RATE),
        _rate,
        "Most requests started per second: 30/s, 120/m, 0 = unlimited",
        commands=_PACED,
        shown=DEFAULT_RATE,
    )
    burst: int = _option(
        1, _positive_int, "Requests that may go back to back after idling", commands=_PACED
    )
    max_attempts: int = _option(
        5,
        _positive_int,
        "Attempts per job (per page for snapshot), the first included",
        commands=_PACED,
    )
    timeout: float = _option(
        10.0, _positive_float, "Per-request timeout in seconds", commands=_CONNECT
    )
    backoff_base: float = _option(
        0.1, _positive_float, "First retry waits up to this", shown="0.1 s"
    )
    backoff_cap: float = _option(20.0, _positive_float, "No retry waits longer", shown="20 s")
    settle: float = _option(
        5.0, _duration, "Resend a call whose answer was lost no sooner than this", shown="5s"
    )
    action: Action = _option("start", Action, "What to do to each job", commands=_SERVICE)
    allow_duplicates: bool = _option(False, _flag, "Accept the same job twice", commands=_MANIFEST)
    allow_empty: bool = _option(
        False,
        _flag,
        "An empty manifest is fine: exit 0, nothing to do (else exit 2)",
        commands=_RUN | {"validate"},
    )
    dry_run: bool = _option(False, _flag, "Validate and print the plan; send nothing")
    canary: bool = _option(True, _flag, "Do not send the first request alone", flag="--no-canary")
    adaptive: bool = _option(
        True,
        _flag,
        "Slow down on 429s and recover along a CUBIC curve",
        flag="--adaptive/--no-adaptive",
        shown="on",
    )
    retry_budget: int = _option(
        500,
        _non_negative_int,
        "Run-wide retry tokens (a retry costs 5, a success refunds 1); 0 = off",
    )
    halt: str | None = _option(
        None, _halt, "Stop dispatching when failures cross fail=N or fail=P%"
    )
    deadline: float | None = _option(
        None, _duration, "Bound the whole run (30m, 90s); unsent jobs end pending"
    )
    ca_bundle: str | None = _option(
        None,
        _text,
        "CA certificates (PEM) to trust instead of the system store",
        commands=_CONNECT,
        path=True,
    )
    iam_endpoint: str | None = _option(
        None,
        _text,
        "IAM endpoint for password login",
        commands=_CONNECT,
        shown="from --region",
    )
    # Forward proxy URL for every call (IAM login too); None: HTTPS_PROXY etc.; "": none.
    proxy: str | None = _option(
        None,
        _any_text,
        "Forward proxy for every call, IAM too: http://[USER:PASSWORD@]HOST:PORT; '' for none",
        commands=_CONNECT,
        metavar="URL",
        shown="HTTPS_PROXY, HTTP_PROXY, NO_PROXY",
    )
    fsync: FsyncPolicy = _option("batch", FsyncPolicy, "Ledger durability")
    manifest_format: Format | None = _option(
        None,
        Format,
        "Manifest format",
        commands=_MANIFEST,
        flag="--format",
        shown="by file suffix",
    )
    log_format: LogFormat = _option("auto", LogFormat, "Logs on stderr", commands=_CONNECT)
    log_level: LogLevel = _option("info", LogLevel, "Log level", commands=_CONNECT)
    progress: ProgressMode = _option("auto", ProgressMode, "Progress display")
    # Waves (launcher.run.waves), --wait (launcher.run.wait), --verify (launcher.run.verify).
    wave_failures: WaveFailures = _option(
        "stop",
        WaveFailures,
        "After a wave with failed, unknown or pending jobs: stop before the next wave "
        "(resumable), or continue",
    )
    wait: bool = _option(
        False,
        _flag,
        "With run-immediate: follow each accepted run until it ends; a failed run means exit 1",
    )
    wait_timeout: float = _option(
        6 * 3600.0,
        _duration,
        "Stop following a run this long after it was accepted (90s, 30m, 6h); it ends `unknown`",
        shown="6h",
    )
    verify: bool = _option(
        False,
        _flag,
        "After the last call, check in the job list that started jobs read SCHEDULING "
        "(stopped: STOPPED); a mismatch means exit 1",
    )
    # Scale-out (launcher.scale.limits): one rate limit for every launcher on the same key.
    redis: str | None = _option(
        None,
        _text,
        "Share the rate limit with every launcher on the same --limit-key through this "
        "Redis: redis://[:PASSWORD@]HOST:PORT/DB",
        # A Redis URL may hold a password: the environment keeps it off command lines.
        env="LAUNCHER_REDIS_URL",
    )
    limit_key: str | None = _option(
        None, _text, "Redis key of the shared limit", shown="from the endpoint host and the AK"
    )
    redis_optional: bool = _option(
        False,
        _flag,
        "If Redis is unreachable at start, warn and apply local limits (else exit 2)",
    )
    shared_concurrency: int = _option(
        0,
        _non_negative_int,
        "Most requests in flight across every launcher on the key; 0 = off",
    )
    # Dispatch processes (launcher.run.fleet): 0 = auto (every core at --rate 0 or a
    # high rate, one process otherwise).
    workers: int = _option(
        0,
        _workers,
        "Dispatch processes: auto uses every core at --rate 0 or a rate one "
        "process cannot reach, and one process otherwise",
        metavar="N|auto",
        shown="auto",
    )
    # Prometheus metrics of the run on http://HOST:PORT/metrics (launcher.run.metrics).
    metrics_port: int | None = _option(
        None,
        _port,
        "Serve Prometheus metrics of the run (jobs by outcome, attempts, in flight, "
        "failures by code) on this port",
    )
    metrics_host: str = _option("127.0.0.1", _text, "Address for --metrics-port")
    # Not options: tables of the config file.
    sim: Mapping[str, Any] = field(default_factory=dict)
    # Per-workspace limits from `[workspaces."ID"]` tables: {ID: (concurrency, rate, burst)}.
    workspaces: Mapping[str, tuple[int, float, int]] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The options as recorded in the ledger header (the Redis URL without its password)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sim"}
        if self.redis:
            values["redis"] = redact_url(self.redis)
        if self.proxy:
            values["proxy"] = redact_url(self.proxy)  # proxy credentials never recorded
        return values


# The table, in the order of the fields (the order of `--help`).
OPTIONS: tuple[Option, ...] = tuple(
    f.metadata[_SPEC]._replace(name=f.name) for f in fields(RunOptions) if _SPEC in f.metadata
)
