"""Shared plumbing of the benchmarks: a loopback nginx answering 204, process measurement,
manifest generation, machine facts and RESULTS.md editing. Standard library only.

Every load the benchmarks generate goes to 127.0.0.1, is bounded in count (the manifest,
`hey -n`) and in time (every process has a timeout and is killed with its group past it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "BENCH_DIR",
    "LAUNCHER",
    "RESULTS",
    "ROOT",
    "VENV_PYTHON",
    "Measurement",
    "Nginx",
    "NginxStats",
    "cpu_jiffies",
    "freeze_launcher",
    "git_commit",
    "machine",
    "measure",
    "others_percent",
    "print_table",
    "shell_join",
    "table_header",
    "update_section",
    "utc_now",
    "wait_until_quiet",
    "workdir",
    "write_manifest",
]

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
LAUNCHER = ROOT / ".venv" / "bin" / "launcher"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
RESULTS = BENCH_DIR / "RESULTS.md"


def utc_now() -> str:
    """The current UTC time, to the minute, for dated rows."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def shell_join(cmd: Sequence[str | os.PathLike[str]]) -> str:
    """A command as one copy-pasteable shell line, with paths under the work tree relative."""
    root = str(ROOT) + os.sep
    return shlex.join([str(part).replace(root, "") for part in cmd])


# -- measuring a process ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one process cost: wall clock, CPU (its own and its reaped children's), peak RSS."""

    cmd: str
    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_mb: float
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def cpu_s(self) -> float:
        """User + system CPU seconds."""
        return self.user_s + self.sys_s

    def tail(self, lines: int = 15) -> str:
        """The last lines of stderr then stdout, for error messages."""
        text = (self.stderr.strip() + "\n" + self.stdout.strip()).strip()
        return "\n".join(text.splitlines()[-lines:])


def measure(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    workdir: Path | None = None,
) -> Measurement:
    """Run `cmd` to completion and return its wall clock, CPU and peak RSS.

    The rusage comes from `wait4` on the child itself, so it covers that process and
    every descendant it waited for (what `/usr/bin/time` reports), and nothing else.
    Past `timeout` seconds the whole process group is killed (SIGTERM, then SIGKILL).
    """
    argv = [str(part) for part in cmd]
    out_dir = Path(tempfile.mkdtemp(prefix="bench-out-"))
    out_path, err_path = out_dir / "stdout", out_dir / "stderr"
    rusage: list[tuple[int, resource.struct_rusage]] = []
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(env) if env is not None else None,
            cwd=workdir,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
        done = threading.Event()
        finished = [0.0]

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            finished[0] = time.perf_counter()
            rusage.append((status, usage))
            done.set()

        reaper = threading.Thread(target=reap, daemon=True)
        reaper.start()
        tree_peak = [0]

        def sample() -> None:
            # ru_maxrss is the largest single process; with --workers the run is
            # several, so the figure that matters is their sum at its peak.
            while not done.wait(0.05):
                tree_peak[0] = max(tree_peak[0], tree_rss_bytes(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = not done.wait(timeout)
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            if not done.wait(10):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                done.wait(10)
        reaper.join(1)
        sampler.join(1)
    proc.returncode = 0  # reaped by wait4 above; keep Popen from waiting again
    status, usage = rusage[0]
    code = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    shutil.rmtree(out_dir, ignore_errors=True)
    return Measurement(
        cmd=shell_join(argv),
        returncode=code,
        wall_s=finished[0] - started,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        max_rss_mb=max(usage.ru_maxrss * 1024, tree_peak[0]) / 1024.0**2,  # ru_: KiB
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
    )


def tree_rss_bytes(root: int) -> int:
    """Memory of `root` and all its descendants now (0 once it is gone): the sum of their
    proportional set sizes, so pages they share (the interpreter, a forked parent's
    pages) count once, not once per process."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, pending = 0, [root]
    page = os.sysconf("SC_PAGE_SIZE")
    while pending:
        pid = pending.pop()
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += int(rollup.split("\nPss:", 1)[1].split()[0]) * 1024  # kB
        except (OSError, IndexError, ValueError):
            try:  # no smaps_rollup (old kernels): resident pages
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            except OSError:
                continue
        pending.extend(children.get(pid, ()))
    return total


# -- the rest of the machine ------------------------------------------------------------------


def cpu_jiffies() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, summed over every CPU."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]
    return (sum(values) - idle) / ticks, sum(values) / ticks


def others_percent(
    before: tuple[float, float], after: tuple[float, float], own_cpu_s: float
) -> float:
    """How busy the machine was with *other* work between two `cpu_jiffies()` readings:
    busy CPU time not accounted for by `own_cpu_s`, as a % of the machine's capacity."""
    busy = after[0] - before[0]
    total = after[1] - before[1]
    if total <= 0:
        return 0.0
    return max(0.0, (busy - own_cpu_s) / total * 100.0)


def wait_until_quiet(max_wait: float, threshold: float = 15.0) -> float:
    """Wait (at most `max_wait` s) until other work uses under `threshold` % of the machine
    over one second; return the last reading. Other sessions' test runs share this machine."""
    deadline = time.monotonic() + max_wait
    while True:
        before = cpu_jiffies()
        time.sleep(1.0)
        busy = others_percent(before, cpu_jiffies(), 0.0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        print(f"  (machine {busy:.0f} % busy with other work: waiting)", flush=True)


def git_commit() -> str:
    """The work tree's commit, `+dirty` when launcher/ has uncommitted changes (read-only)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "launcher"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + ("+dirty" if dirty else "")


def freeze_launcher(tmp: Path) -> str:
    """Run every launcher process of this benchmark from one snapshot of launcher/.

    Other engineers commit to this work tree while benchmarks run, and `.venv` holds an
    editable install: without a snapshot, two runs of one benchmark could time different
    code. The package is copied (and byte-compiled) under `tmp/src`, which goes first on
    PYTHONPATH for every child; `.venv/bin/launcher` then imports the copy. Returns a label
    of the code measured: the commit, `+dirty`, and a digest of the copied sources.
    """
    label = git_commit()
    src = tmp / "src"
    shutil.copytree(
        ROOT / "launcher", src / "launcher", ignore=shutil.ignore_patterns("__pycache__")
    )
    digest = hashlib.sha256()
    for path in sorted((src / "launcher").rglob("*.py")):
        digest.update(path.relative_to(src).as_posix().encode() + b"\0" + path.read_bytes())
    subprocess.run([str(VENV_PYTHON), "-m", "compileall", "-q", str(src)], check=False, timeout=120)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(src), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return f"{label} (src {digest.hexdigest()[:8]})"


# -- the server ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 65s;
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        listen 127.0.0.1:{tls_port} ssl backlog=4096;
        ssl_certificate {dir}/tls.pem;
        ssl_certificate_key {dir}/tls.key;
        location = /_nginx_status {{ stub_status; }}
        location / {{ return 204; }}
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class NginxStats:
    """stub_status counters: connections accepted and requests served so far."""

    accepts: int
    requests: int


def _find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("nginx not found: `make bench` installs it (apt-get install nginx)")


class Nginx:
    """A throwaway nginx on 127.0.0.1:<free port> answering 204 to everything, keepalive on.

    Its config, pid and logs live in a temporary directory that is removed afterwards.
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.binary = _find_nginx()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        os.chmod(self.dir, 0o755)  # nginx workers run as nobody when started by root
        self.port = 0
        self.tls_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def tls_url(self) -> str:
        """The https base URL (a self-signed certificate for 127.0.0.1: `self.ca_file`)."""
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def ca_file(self) -> Path:
        """The certificate of the TLS port, to trust (it is its own CA)."""
        return self.dir / "tls.pem"

    def _make_certificate(self) -> None:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(self.dir / "tls.key"), "-out", str(self.ca_file),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        os.chmod(self.dir / "tls.key", 0o644)  # read by workers that run as nobody

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:40123."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Nginx:
        self._make_certificate()
        for _ in range(5):  # the free port may be taken between probe and bind: try again
            self.port = _free_port()
            self.tls_port = _free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(
                _NGINX_CONF.format(
                    workers=self.workers, dir=self.dir, port=self.port, tls_port=self.tls_port
                )
            )
            self._proc = subprocess.Popen(
                [self.binary, "-p", str(self.dir), "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready():
                return self
            self._stop()
        log = (self.dir / "error.log").read_text(errors="replace")[-2000:]
        shutil.rmtree(self.dir, ignore_errors=True)
        raise SystemExit(f"nginx did not start:\n{log}")

    def __exit__(self, *exc: object) -> None:
        self._stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return False
            try:
                self.stats()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # fast shutdown of the master and its workers
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stats(self) -> NginxStats:
        """Read stub_status (this read counts as one accepted connection and one request)."""
        with urllib.request.urlopen(f"{self.url}/_nginx_status", timeout=5) as response:
            text = response.read().decode()
        numbers = re.search(r"\n\s*(\d+)\s+(\d+)\s+(\d+)\s*\n", text)
        if numbers is None:
            raise OSError(f"unexpected stub_status answer: {text!r}")
        return NginxStats(int(numbers.group(1)), int(numbers.group(3)))

    def worker_cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the nginx worker processes."""
        if self._proc is None:
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == self._proc.pid:  # ppid
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks


# -- inputs and facts ---------------------------------------------------------------------


def write_manifest(path: Path, jobs: int, bizdate: str = "2026-11-28") -> Path:
    """Write a JSONL manifest of `jobs` lines like {"name": "job-00001", "params": {...}}."""
    width = max(5, len(str(jobs)))
    if path.exists() and path.stat().st_size > 0:
        return path
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as out:
        chunk: list[str] = []
        for i in range(1, jobs + 1):
            chunk.append(f'{{"name": "job-{i:0{width}d}", "params": {{"bizdate": "{bizdate}"}}}}\n')
            if len(chunk) >= 10_000:
                out.write("".join(chunk))
                chunk.clear()
        out.write("".join(chunk))
    tmp.rename(path)
    return path


def _first_line(cmd: Sequence[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine() -> dict[str, str]:
    """nproc, CPU model, memory, kernel and tool versions, for the record."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.0f} GiB"
    return {
        "nproc": _first_line(["nproc"]),
        "cpu": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": _first_line([str(VENV_PYTHON), "--version"]),
        "nginx": _first_line([_find_nginx(), "-v"]),
        "commit": git_commit(),
    }


# -- output ---------------------------------------------------------------------------------


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print an aligned plain-text table (numbers right-aligned)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            numeric = bool(re.fullmatch(r"[-+0-9.,×x%]+", cell))
            parts.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    print(fmt(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(fmt(row))


# Columns of the RESULTS.md tables; a trailing ":" right-aligns the column.
THROUGHPUT_COLUMNS = (
    "date", "tool", "jobs:", "starts/s:", "CPU s/1k:", "µs/start:", "peak RSS MB:", "wall s:",
    "conns:", "others %:", "runs:", "nproc:", "CPU", "commit", "command",
)  # fmt: skip
SCALE_COLUMNS = (
    "date", "what", "jobs:", "wall s:", "CPU s:", "peak RSS MB:", "goal", "exit:", "others %:",
    "nproc:", "CPU", "commit", "command",
)  # fmt: skip


def table_header(columns: Sequence[str]) -> str:
    """A markdown table's header and alignment rows."""
    names = [c.rstrip(":") for c in columns]
    aligns = ["---:" if c.endswith(":") else "---" for c in columns]
    return "| " + " | ".join(names) + " |\n|" + "|".join(aligns) + "|"


_TEMPLATE = """\
# Benchmarks

Measured on loopback against a throwaway nginx that answers `204` to everything
(`location / {{ return 204; }}`, keepalive on, access log off, 1 worker unless noted), so what is
measured is the client's own cost per start. Rows are appended by the scripts, never edited
by hand; each row is dated and names the machine (`nproc`, CPU model) and the exact command.

Reproduce on a machine with only `python3`: `make bench` (throughput table),
`make bench-scale` (memory and scale), `make bench-profile` (where the launcher's CPU goes).
The targets install nginx and hey from Debian packages when missing, build `.venv` and
`benchmarks/.venv-bench` (the official SDK and py-spy), and write temporary files
(manifests, ledgers, nginx config and logs) under a temporary directory they remove afterwards.
Options: `make bench BENCH_ARGS="--jobs 20000 --repeat 3 --only launcher,naive"`.

Columns:

- **starts/s**: jobs ÷ wall-clock seconds of the whole process, from its start to its exit
  (interpreter start-up, imports, manifest validation, the final summary included).
- **CPU s/1k**: user + system CPU seconds of the process and every child it waited for
  (`wait4` rusage, what `/usr/bin/time` reports) per 1,000 starts; **µs/start** is the
  same figure per start. The server's CPU is not included.
- **peak RSS MB**: the most memory the run held at once: the larger of the process's
  maximum resident set size (`ru_maxrss`) and the peak sum of the proportional set sizes
  (PSS: shared pages split between the processes sharing them) of it and its descendants,
  sampled every 50 ms, so a run with `--workers` (or a forked fold) counts every process.
- **conns**: TCP connections the server accepted during the run (stub_status); a pool that
  does not keep its connections opens many more than its size.
- **others %**: how busy the machine was with work other than the measured process and
  nginx during the run (from `/proc/stat`), as a % of all its CPUs. This machine is shared
  with other sessions' test runs: the scripts wait (up to a minute) for a quiet machine before
  each run, and this column says how quiet it actually was. CPU per start is robust to it;
  starts/s and wall clock are not.
- **commit**: the work tree's `git` commit, `+dirty` when `launcher/` had uncommitted changes,
  and (since the scripts snapshot `launcher/` at their start, so that every run of one
  benchmark times the same code) a digest of the snapshot's sources.
- **runs**: how many runs the figures are the median of (by starts/s).

Goals (the issue "Performance: beat the hand-written loop, use every core, bounded memory at
1M jobs"): launcher ≥ 1.5× the naive loop's starts/s, ≥ 15× the SDK with 64 threads,
≤ 60 µs CPU per start, ≤ 120 MB peak RSS at 1,000,000 jobs, a report of a 1,000,000-job ledger
in seconds, and (not measurable yet) a resume of a finished 300,000-job run in ≤ 2 s.

The tools:

- **launcher**: `.venv/bin/launcher run` with AK/SK signing (dummy keys; nginx does not check)
  and the ledger on (default `--fsync batch`), `--rate 0 --concurrency 64`.
- **naive**: `benchmarks/naive_loop.py`: aiohttp `ClientSession` + `asyncio.Semaphore(64)` + one
  task per line gathered + `json.dumps` of one result line per request; no signing, no ledger
  intent, no retries. Runs on the same interpreter and aiohttp as the launcher.
- **sdk**: `benchmarks/sdk_threads.py`: the official `huaweicloudsdkdgc.v1.DgcClient.start_job`
  (SDK signing, `requests`, SDK default HTTP config: a 10-connection pool) from a
  `ThreadPoolExecutor(64)`, one result line per request. **sdk-pool64** (optional): the same with
  a 64-connection pool.
- **hey**: `hey -n N -c 64 -m POST` with the same body: the ceiling of this machine and server.

## Throughput (`make bench`)

{throughput_header}

## Goal checks (`make bench`)

## Scale and memory (`make bench-scale`)

{scale_header}

## Profile (`make bench-profile`)
"""


def update_section(heading: str, lines: Sequence[str], path: Path = RESULTS) -> None:
    """Append `lines` at the end of the section whose `## ` heading starts with `heading`.

    Creates the file from the template first when it does not exist.
    """
    if not path.exists():
        path.write_text(
            _TEMPLATE.format(
                throughput_header=table_header(THROUGHPUT_COLUMNS),
                scale_header=table_header(SCALE_COLUMNS),
            )
        )
    text = path.read_text().splitlines()
    start = next((i for i, line in enumerate(text) if line.startswith(heading)), None)
    if start is None:
        text += ["", heading]
        start = len(text) - 1
    end = next(
        (i for i in range(start + 1, len(text)) if text[i].startswith("## ")),
        len(text),
    )
    while end > start + 1 and not text[end - 1].strip():
        end -= 1
    new = list(lines)
    if end == start + 1 and new and new[0].strip():
        new.insert(0, "")  # a blank line between a heading and its first content
    text[end:end] = new
    path.write_text("\n".join(text).rstrip() + "\n")


@contextlib.contextmanager
def workdir(keep: bool = False) -> Iterator[Path]:
    """A temporary directory for manifests and ledgers, removed afterwards unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept temporary files in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


class TinyProxy:
    """A throwaway tinyproxy on 127.0.0.1:<free port> (any CONNECT port allowed), for the
    launcher's proxied rows. `make bench-tools` installs it."""

    def __init__(self) -> None:
        binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        if not os.access(binary, os.X_OK):
            raise SystemExit("tinyproxy not found: `make bench` installs it")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="bench-tinyproxy-"))
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The proxy's URL, for HTTPS_PROXY."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TinyProxy:
        self.port = _free_port()
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 60", "MaxClients 512",
                 "Allow 127.0.0.1", "LogLevel Error"]  # fmt: skip
        if os.geteuid() == 0:
            lines += ["User nobody", "Group nogroup"]
        conf = self.dir / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n")
        self._proc = subprocess.Popen(
            [self.binary, "-d", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise SystemExit("tinyproxy did not start")

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
