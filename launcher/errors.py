"""The launcher's error tree; the CLI maps each branch to an exit code.

    LauncherError
    ├── UsageError          bad options or input; nothing was sent      → exit 2
    │   └── ManifestInvalid bad manifest lines (carries every message)  → exit 2
    └── HaltError           a safety stop during a run                  → exit 3
        ├── AuthFailed      the service rejected our credentials
        ├── TlsFailed       the service's certificate did not verify
        ├── LedgerFailed    the ledger cannot be written
        └── ManifestChanged the manifest's bytes differ from those validated

An interrupted run (SIGINT/SIGTERM) is not an error: it exits `EXIT_INTERRUPTED`
(130, as a shell reports a process killed by SIGINT) and is resumable.

Outcomes of individual requests are data (`models.Reply`), never exceptions:
one failed start does not stop a run.
"""

from __future__ import annotations

__all__ = [
    "EXIT_INTERRUPTED",
    "AuthFailed",
    "HaltError",
    "LauncherError",
    "LedgerFailed",
    "ManifestChanged",
    "ManifestInvalid",
    "TlsFailed",
    "UsageError",
    "require_extra",
]

EXIT_INTERRUPTED = 130


class LauncherError(Exception):
    """Base of every error the launcher raises on purpose."""

    exit_code = 1


class UsageError(LauncherError):
    """Bad usage or bad input, found before anything was sent."""

    exit_code = 2


class ManifestInvalid(UsageError):
    """The manifest has bad lines; `messages` holds `FILE:LINE: field: problem` lines."""

    def __init__(self, messages: list[str], total: int) -> None:
        self.messages = messages
        self.total = total
        more = total - len(messages)
        text = "\n".join(messages)
        if more > 0:
            text += f"\n... and {more} more error(s)"
        super().__init__(text)


class HaltError(LauncherError):
    """A safety stop: dispatching was halted before the manifest was done."""

    exit_code = 3


class AuthFailed(HaltError):
    """The service rejected the credentials, and a refresh could not fix it."""


class TlsFailed(HaltError):
    """The endpoint's certificate (or host name) failed verification; nothing was sent."""


class LedgerFailed(HaltError):
    """The ledger could not be written; nothing more may be sent."""


def require_extra(module: str, extra: str, feature: str) -> None:
    """Raise `UsageError` (exit 2) at once when `feature` needs `module`, which the
    optional dependency group `extra` installs, and it is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(
            f"{feature} needs the {extra!r} extra, which is not installed; run: "
            f"pip install 'launcher[{extra}]'"
        )


class ManifestChanged(HaltError):
    """The manifest read for sending is not the one validated: stop before its next job.

    Raised by `launcher.manifest.validate.iter_jobs` (or handed to its `on_change`)
    as soon as a chunk of the file differs from the chunk validated, before any
    job from it is yielded; the run so far is in the ledger and can be resumed.
    """
