"""What a replay and a report read and write on disk: the replay manifest is made as
ledgers are (0600, never through a link), and never-sent jobs are read only from the
bytes just hashed (issue 17)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from launch_helpers import job_lines, write_manifest, write_run

from launcher.config import RunOptions
from launcher.errors import UsageError
from launcher.ledger import fold, read_ledger
from launcher.run import replay as replaying
from launcher.run import reports

OPTIONS = RunOptions(project_id="p1")


def source_ledger(tmp_path: Path, jobs: int = 20, sent: int = 5) -> tuple[Path, Path]:
    """A run of `jobs` jobs that sent the first `sent` (the rest were never sent)."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(jobs))
    ledger = tmp_path / "l.jsonl"
    write_run(ledger, manifest, OPTIONS, settle=sent)
    return manifest, ledger


def plan(source: Path, target: Path) -> replaying.ReplayPlan:
    return replaying.plan_replay(
        str(source), only=frozenset({"pending"}), project_id=None, workspace_map={},
        ledger=str(target),
    )  # fmt: skip


def test_the_replay_manifest_is_created_0600(tmp_path: Path) -> None:
    _, source = source_ledger(tmp_path)
    old = os.umask(0o022)
    try:
        planned = plan(source, tmp_path / "replay" / "r.jsonl")
        again = plan(source, tmp_path / "replay" / "r.jsonl")  # a dry run's, made anew
    finally:
        os.umask(old)
    assert planned.jobs == again.jobs == 15
    assert stat.S_IMODE(planned.manifest.stat().st_mode) == 0o600
    assert stat.S_IMODE(planned.manifest.parent.stat().st_mode) == 0o700


def test_a_link_planted_as_the_replay_manifest_is_not_followed(tmp_path: Path) -> None:
    _, source = source_ledger(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me\n")
    planted = tmp_path / "r.manifest.jsonl"
    planted.symlink_to(victim)
    planned = plan(source, tmp_path / "r.jsonl")
    assert victim.read_bytes() == b"keep me\n"  # the link's target is untouched
    assert not planned.manifest.is_symlink()
    assert stat.S_IMODE(planned.manifest.stat().st_mode) == 0o600
    assert len(planned.manifest.read_bytes().splitlines()) == 15


def swap_after_hashing(
    monkeypatch: pytest.MonkeyPatch, module: Any, manifest: Path, new: bytes
) -> None:
    """The manifest is replaced right after it was hashed: the race a check must catch."""
    real: Callable[..., Any] = module.file_digests

    def hash_then_swap(path: Any) -> Any:
        found = real(path)
        manifest.write_bytes(new)
        return found

    monkeypatch.setattr(module, "file_digests", hash_then_swap)


def forged_lines(count: int) -> bytes:
    """Other jobs, longer than the original: bytes that were never hashed or checked."""
    return b"".join(orjson.dumps(line) + b"\n" for line in job_lines(count, prefix="smuggled"))


def test_replay_reads_never_sent_jobs_only_from_the_bytes_it_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, source = source_ledger(tmp_path)
    swap_after_hashing(monkeypatch, replaying, manifest, forged_lines(40))
    with pytest.raises(UsageError, match="changed while it was read") as stopped:
        plan(source, tmp_path / "r.jsonl")
    assert stopped.value.exit_code == 2
    written = tmp_path / "r.manifest.jsonl"
    assert b"smuggled" not in (written.read_bytes() if written.exists() else b"")


def test_report_lists_never_sent_jobs_only_from_the_bytes_it_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, source = source_ledger(tmp_path)
    history = fold([read_ledger(source)])
    listed = reports.never_sent(history)
    assert len(listed.jobs) == 15
    assert not listed.missing
    swap_after_hashing(monkeypatch, reports, manifest, forged_lines(40))
    changed = reports.never_sent(history)
    assert changed.jobs == []
    assert changed.missing == [f"{manifest.resolve()}: the manifest changed while it was read"]
