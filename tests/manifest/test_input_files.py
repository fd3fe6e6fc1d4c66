"""Bounded work on any input: manifests and config files must be regular files (a FIFO or
a device is refused at once, exit 2), `-` reads stdin whole before anything is sent, YAML
has a size cap and an expansion cap, and an empty manifest is an error unless allowed.
The real CLI in a subprocess, real FIFOs and devices, a raw listener for the wire."""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import anyio
import orjson
import pytest
from launch_helpers import job_lines, launcher, sim_env, write_manifest
from raw_listener import raw_listener

from launcher.errors import UsageError
from launcher.manifest import lines
from launcher.manifest.validate import validate
from launcher.manifest.yaml_nodes import MAX_YAML_BYTES
from launcher.simulator.app import running

pytestmark = pytest.mark.anyio


async def _launcher(
    *args: str, stdin: bytes | None = None, seconds: float = 30, **env: str
) -> tuple[int, str]:
    """The CLI with `stdin`; a hang fails the test (after `seconds`) instead of the suite."""
    with anyio.fail_after(seconds):
        done = await anyio.run_process(
            [sys.executable, "-m", "launcher", *args],
            input=stdin,
            env=sim_env(**env),
            check=False,
        )
    return done.returncode, (done.stdout + done.stderr).decode()


_DEVICES = [device for device in ("/dev/zero", "/dev/urandom") if os.path.exists(device)]


@pytest.mark.parametrize("source", ["fifo", *_DEVICES])
async def test_a_fifo_or_device_manifest_is_refused_at_once(tmp_path: Path, source: str) -> None:
    if source == "fifo":
        source = str(tmp_path / "m.jsonl")
        os.mkfifo(source)  # no writer: reading it would wait forever
    with raw_listener() as wire:
        code, output = await _launcher(
            "run", source, "--endpoint", wire.url, "--project-id", "p1",
            "--ledger", str(tmp_path / "l.jsonl"),
        )  # fmt: skip
    assert code == 2, output
    assert "not a regular file" in output
    assert "give - to read the manifest from stdin" in output
    assert wire.connections == 0
    assert not (tmp_path / "l.jsonl").exists()


async def test_a_fifo_config_file_is_refused_at_once(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(2))
    config = tmp_path / "c.toml"
    os.mkfifo(config)
    code, output = await _launcher("run", str(manifest), "--config", str(config))
    assert code == 2, output
    assert f"{config}: not a regular file (a FIFO): a config file must be a regular file" in output


async def test_stdin_manifest_is_read_whole_and_validated_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    good = b"".join(orjson.dumps(line) + b"\n" for line in job_lines(300))
    bad = good + b'{"name": "x", "parmas": {}}\n'  # the last line is wrong
    with raw_listener() as wire:
        code, output = await _launcher(
            "run", "-", "--endpoint", wire.url, "--project-id", "p1",
            "--ledger", str(tmp_path / "bad.jsonl"), stdin=bad,
        )  # fmt: skip
    assert code == 2, output
    assert ":301: parmas: unknown field" in output
    assert wire.connections == 0
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    async with running() as (sim, url):
        ledger = tmp_path / "l.jsonl"
        code, output = await _launcher(
            "run", "-", "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--ledger", str(ledger), stdin=good, TMPDIR=str(spool_dir),
        )  # fmt: skip
    assert code == 0, output
    assert sum(sim.stats.starts.values()) == 300
    assert os.listdir(spool_dir) == []  # the private copy of stdin is gone


async def test_validate_reads_stdin(tmp_path: Path) -> None:
    data = b"".join(orjson.dumps(line) + b"\n" for line in job_lines(5))
    code, output = await _launcher("validate", "-", "--project-id", "p1", stdin=data)
    assert code == 0, output
    assert "5 job(s), valid" in output


def _merge_bomb(depth: int = 8, fan: int = 9) -> str:
    lines = ["x-0: &a0 {name: j, params: {d: '1'}}"]
    for i in range(1, depth + 1):
        sources = ", ".join([f"*a{i - 1}"] * fan)
        lines.append(f"x-{i}: &a{i} {{<<: [{sources}]}}")
    lines.append("jobs:\n- <<: *a8")
    return "\n".join(lines) + "\n"


async def test_yaml_merge_key_bomb_fails_fast_with_exit_2(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_merge_bomb())
    assert len(bomb.read_bytes()) < 600  # 9^8 = 43 million merges from these bytes
    code, output = await _launcher("validate", str(bomb), "--project-id", "p1", seconds=20)
    assert code == 2, output
    assert "aliases and << merges count" in output


def test_yaml_aliases_in_the_job_list_count_too(tmp_path: Path) -> None:
    path = tmp_path / "wide.yaml"
    job = "x-j: &j {name: j, params: {" + ", ".join(f"p{i}: v" for i in range(60)) + "}}\n"
    path.write_text(job + "jobs: [" + ", ".join(["*j"] * 3000) + "]\n")
    result = validate(path, allow_duplicates=True)
    assert result.problem_count == 1
    assert "expands to more than" in result.problems[0].message


def test_yaml_over_the_size_cap_is_refused_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    line = b"- {name: job, params: {pad: '" + b"x" * 1000 + b"'}}\n"
    path.write_bytes(b"jobs:\n" + line * (MAX_YAML_BYTES // len(line) + 2))
    result = validate(path)
    assert [p.message for p in result.problems] == [
        f"larger than {MAX_YAML_BYTES >> 20} MiB; YAML is read whole: give a large manifest "
        "as JSONL or CSV"
    ]


def test_yaml_with_ordinary_anchors_and_merges_still_works(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "x-defaults: &d {workspace: ws1, params: {bizdate: '2026-11-28'}}\n"
        "jobs:\n" + "".join(f"- {{<<: *d, name: job-{n}}}\n" for n in range(2000))
    )
    result = validate(path, allow_duplicates=True)
    assert result.problem_count == 0
    assert result.jobs == 2000


@pytest.mark.parametrize("content", [b"", b"# only a comment\n\n"])
async def test_empty_manifest_exits_2_unless_allowed(tmp_path: Path, content: bytes) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(content)
    with raw_listener() as wire:
        code, output = await launcher_out(
            "run", str(manifest), "--endpoint", wire.url, "--project-id", "p1",
            "--ledger", str(tmp_path / "l.jsonl"),
        )  # fmt: skip
        allowed, allowed_output = await launcher_out(
            "run", str(manifest), "--endpoint", wire.url, "--project-id", "p1",
            "--ledger", str(tmp_path / "l.jsonl"), "--allow-empty",
        )  # fmt: skip
    assert code == 2, output
    assert "no jobs in the manifest" in output
    assert "--allow-empty" in output
    assert allowed == 0, allowed_output
    assert "nothing to do" in allowed_output
    assert wire.connections == 0


async def launcher_out(*args: str) -> tuple[int, str]:
    done = await launcher(*args)
    return done.code, done.stdout + done.stderr


def test_stdin_is_capped_and_a_terminal_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tty = False

    class _Stdin(io.TextIOWrapper):
        def isatty(self) -> bool:
            return tty

    monkeypatch.setattr(lines, "MAX_STDIN_BYTES", 3 << 20)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sys, "stdin", _Stdin(io.BytesIO(b'{"name": "a"}\n' * 300_000)))
    with pytest.raises(UsageError, match="stdin holds more than"), lines.stdin_spooled("-"):
        pass
    assert os.listdir(tmp_path) == []  # the partial copy is removed
    tty = True
    monkeypatch.setattr(sys, "stdin", _Stdin(io.BytesIO(b"")))
    with pytest.raises(UsageError, match="stdin is a terminal"), lines.stdin_spooled("-"):
        pass


async def test_validate_refuses_an_empty_manifest_as_run_does(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("# nothing yet\n")
    code, output = await _launcher("validate", str(manifest))
    assert code == 2, output
    assert "no jobs in the manifest" in output
    code, output = await _launcher("validate", str(manifest), "--allow-empty")
    assert code == 0, output
    assert "0 job(s), valid" in output
