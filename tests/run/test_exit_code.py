"""`exit_code`: how a segment ended decides its exit status (interface.md's table)."""

from __future__ import annotations

import pytest

from launcher.errors import EXIT_INTERRUPTED, AuthFailed, HaltError, LedgerFailed
from launcher.run.segment import exit_code

HALT = HaltError("failure threshold")

CASES = [
    # halt, interrupted, worker, stopped, started, done, jobs -> code
    pytest.param(None, False, False, False, 10, 10, 10, 0, id="every job started"),
    pytest.param(None, False, False, False, 9, 10, 10, 1, id="one job failed"),
    pytest.param(None, False, False, True, 4, 4, 10, 1, id="stopped early: jobs never sent"),
    pytest.param(None, False, False, False, 12, 5, 12, 0, id="earlier segments started the rest"),
    pytest.param(HALT, False, False, True, 3, 3, 10, 3, id="safety stop"),
    pytest.param(AuthFailed("bad key"), False, False, True, 0, 1, 10, 3, id="auth stop"),
    pytest.param(LedgerFailed("disk full"), True, False, True, 1, 1, 10, 3, id="halt beats signal"),
    pytest.param(None, True, False, True, 10, 10, 10, EXIT_INTERRUPTED, id="interrupted"),
    pytest.param(None, True, True, True, 2, 2, 10, EXIT_INTERRUPTED, id="worker interrupted"),
    pytest.param(None, False, True, False, 5, 5, 10, 0, id="worker: its share started"),
    pytest.param(None, False, True, False, 4, 5, 10, 1, id="worker: one of its share failed"),
    pytest.param(None, False, True, True, 5, 5, 10, 1, id="worker: stopped by the fleet"),
]


@pytest.mark.parametrize(
    ("halt", "interrupted", "worker", "stopped", "started", "done", "jobs", "code"), CASES
)
def test_exit_code(
    halt: HaltError | None,
    interrupted: bool,
    worker: bool,
    stopped: bool,
    started: int,
    done: int,
    jobs: int,
    code: int,
) -> None:
    """Each way a segment can end maps to exactly one documented exit code."""
    assert (
        exit_code(
            halt=halt,
            interrupted=interrupted,
            worker=worker,
            stopped=stopped,
            started=started,
            done=done,
            jobs=jobs,
        )
        == code
    )
