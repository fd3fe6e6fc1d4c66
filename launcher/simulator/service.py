"""The simulated DLF service behind the gateway: job state, the actions, the list queries."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Final
from urllib.parse import unquote

import orjson
from aiohttp import web

from launcher.simulator.answers import MSG_INVALID, MSG_NO_JOB, Answer, error
from launcher.simulator.config import SimConfig
from launcher.simulator.stats import SimStats

__all__ = ["ACTIONS", "JobService"]

ACTIONS: Final = frozenset({"start", "stop", "run-immediate"})
_PARAM_TYPES: Final = frozenset({"variable", "constants"})


class _Job:
    __slots__ = ("last_instance_status", "status")

    def __init__(self) -> None:
        self.status = "STOPPED"
        self.last_instance_status: str | None = None


class JobService:
    """Job state per (project, workspace); the `workspace` header's absence is key `None`."""

    def __init__(self, config: SimConfig, stats: SimStats) -> None:
        self.config = config
        self.stats = stats
        self._jobs: dict[tuple[str, str | None], dict[str, _Job]] = {}
        self._instances: dict[tuple[str, str | None], list[dict[str, object]]] = {}
        self._next_instance_id = 1_000_000
        self._run_rng = random.Random(None if config.seed is None else config.seed + 2)
        # Instances still running: id -> (Unix time they end, final status, their job).
        self._running: dict[int, tuple[float, str, _Job]] = {}

    def handle(
        self, route: str, request: web.Request, parts: list[str], body: bytes, rid: str
    ) -> Answer:
        try:
            project = unquote(parts[2], errors="strict")
            # The name is one raw segment: `%2F` inside it is part of the name.
            named = route in ACTIONS or route == "instance"
            name = unquote(parts[4], errors="strict") if named else ""
        except UnicodeDecodeError:
            return error(400, "DLF.3051", f"{MSG_INVALID}: path is not UTF-8", rid)
        workspace = request.headers.get("workspace") or None
        if route == "jobs":
            return self._list_jobs(request, project, workspace, rid)
        if route == "instances":
            return self._list_instances(request, project, workspace, rid)
        if route == "instance":
            return self._show_instance(project, workspace, name, parts[6], rid)
        if route == "stop" and body:
            self.stats.stop_bodies += 1  # the SDK's stop has no body: a client that sends one
        problem = _body_problem(body)
        if problem is not None:
            return error(400, "DLF.3051", f"{MSG_INVALID}: {problem}", rid)
        if not self._exists(name):
            return error(400, "DLF.0100", MSG_NO_JOB, rid)
        space = self._jobs.get((project, workspace))
        if space is None:
            space = self._jobs[(project, workspace)] = {}
        job = space.get(name)
        if job is None:
            job = space[name] = _Job()
            job.status = self.initial_status(project, workspace, name)
        key = (project, workspace, name)
        if route == "start":
            job.status = "SCHEDULING"
            self.stats.starts[key] += 1
            return Answer(204)
        if route == "stop":
            job.status = "STOPPED"
            self.stats.stops[key] += 1
            return Answer(204)
        self._next_instance_id += 1
        instance_id = self._next_instance_id
        now_ms = int((time.time() + self.config.clock_skew) * 1000)  # the service's clock
        self._instances.setdefault((project, workspace), []).append(
            {
                "jobName": name,
                "instanceId": instance_id,
                "status": "running",
                "planTime": now_ms,
                "startTime": now_ms,
                "endTime": None,
                "instanceType": 2,  # manual scheduling
            }
        )
        job.last_instance_status = "running"
        if self.config.run_seconds is not None:
            ends = "fail" if self._run_rng.random() < self.config.run_fail else "success"
            self._running[instance_id] = (time.time() + self.config.run_seconds, ends, job)
        self.stats.runs[key] += 1
        answer_id: int | str = str(instance_id) if self.config.instance_id_string else instance_id
        return Answer(200, orjson.dumps({"instanceId": answer_id}))

    def _show_instance(
        self, project: str, workspace: str | None, name: str, raw_id: str, rid: str
    ) -> Answer:
        for instance in self._instances.get((project, workspace), ()):
            if instance["jobName"] == name and str(instance["instanceId"]) == raw_id:
                self._end_if_due(instance)
                return Answer(200, orjson.dumps(instance))
        return error(400, "DLF.0100", "The job instance does not exist.", rid)

    def initial_status(self, project: str, workspace: str | None, name: str) -> str:
        """A job's state before any call: SCHEDULING for a seeded `scheduled_fraction`."""
        fraction = self.config.scheduled_fraction
        if fraction <= 0.0:
            return "STOPPED"
        draw = random.Random(f"{self.config.seed}:{project}:{workspace}:{name}").random()
        return "SCHEDULING" if draw < fraction else "STOPPED"

    def _end_if_due(self, instance: dict[str, object]) -> None:
        """End a running instance whose `run_seconds` are over, with its drawn status."""
        instance_id = instance["instanceId"]
        if not isinstance(instance_id, int):
            return
        due = self._running.get(instance_id)
        if due is None:
            return
        ends_at, status, job = due
        if time.time() >= ends_at:
            del self._running[instance_id]
            instance["status"] = status
            instance["endTime"] = int(ends_at * 1000)
            job.last_instance_status = status

    def instance_statuses(self) -> Counter[str]:
        """Every run-immediate instance by status, as the service sees it now."""
        counts: Counter[str] = Counter()
        for instances in self._instances.values():
            for instance in instances:
                self._end_if_due(instance)
                counts[str(instance["status"])] += 1
        return counts

    def _exists(self, name: str) -> bool:
        config = self.config
        if config.missing_prefix is not None and name.startswith(config.missing_prefix):
            return False
        return config.known_jobs is None or name in config.known_jobs

    def _list_jobs(
        self, request: web.Request, project: str, workspace: str | None, rid: str
    ) -> Answer:
        query = request.query
        try:
            limit = _int_param(query.get("limit"), 10, 1, 1000)
            offset = _int_param(query.get("offset"), 0, 0, None)
        except ValueError as exc:
            return error(400, "DLF.3051", f"{MSG_INVALID}: {exc}", rid)
        pattern = query.get("jobName", "")  # a substring match, as the service's
        job_type = query.get("jobType") or None
        space = self._jobs.get((project, workspace), {})
        # Without a configured job list every name exists, so list the ones seen so far.
        candidates = space.keys() if self.config.known_jobs is None else self.config.known_jobs
        real_time = self.config.real_time_jobs
        names = sorted(
            n
            for n in candidates
            if pattern in n
            and self._exists(n)
            and (job_type is None or job_type == ("REAL_TIME" if n in real_time else "BATCH"))
        )
        jobs = []
        # `offset` is a page number (the SDK's ListJobsRequest: "页数"), not a row.
        for name in names[offset * limit : (offset + 1) * limit]:
            job = space.get(name)
            jobs.append(
                {
                    "name": name,
                    "jobType": "REAL_TIME" if name in real_time else "BATCH",
                    "status": job.status if job else self.initial_status(project, workspace, name),
                    "lastInstanceStatus": job.last_instance_status if job else None,
                }
            )
        return Answer(200, orjson.dumps({"total": len(names), "jobs": jobs}))

    def _list_instances(
        self, request: web.Request, project: str, workspace: str | None, rid: str
    ) -> Answer:
        query = request.query
        try:
            limit = _int_param(query.get("limit"), 10, 1, 1000)
            offset = _int_param(query.get("offset"), 0, 0, None)
            min_plan = _int_param(query.get("minPlanTime"), 0, 0, None)
            max_plan = _int_param(query.get("maxPlanTime"), 2**63 - 1, 0, None)
        except ValueError as exc:
            return error(400, "DLF.3051", f"{MSG_INVALID}: {exc}", rid)
        job_name = query.get("jobName") or None
        # Without preciseQuery=true the service matches job names by substring.
        precise = query.get("preciseQuery") == "true"
        status = query.get("status") or None
        instance_type = query.get("instanceType") or None
        for instance in self._instances.get((project, workspace), ()):
            self._end_if_due(instance)
        found = [
            instance
            for instance in reversed(self._instances.get((project, workspace), []))  # newest first
            if (
                job_name is None
                or (
                    instance["jobName"] == job_name
                    if precise
                    else job_name in str(instance["jobName"])
                )
            )
            and (status is None or instance["status"] == status)
            and (instance_type is None or str(instance["instanceType"]) == instance_type)
            and min_plan <= _ms(instance["planTime"]) <= max_plan
        ]
        page = found[offset * limit : (offset + 1) * limit]  # `offset`: a page number
        return Answer(200, orjson.dumps({"total": len(found), "instances": page}))


def _ms(value: object) -> int:
    return value if isinstance(value, int) else 0


def _int_param(raw: str | None, default: int, low: int, high: int | None) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"{value} is out of range")
    return value


def _body_problem(body: bytes) -> str | None:
    """Why a start/stop/run-immediate body is invalid, or None (as the service validates it)."""
    if not body.strip():
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "body is not JSON"
    if not isinstance(document, dict):
        return "body is not a JSON object"
    start_date = document.get("start_date")
    if start_date is not None and (isinstance(start_date, bool) or not isinstance(start_date, int)):
        return "start_date must be an integer"
    ignore = document.get("ignore_first_self_dep")
    if ignore is not None and not isinstance(ignore, bool):
        return "ignore_first_self_dep must be a boolean"
    params = document.get("jobParams")
    if params is None:
        return None
    if not isinstance(params, list):
        return "jobParams must be a list"
    for index, param in enumerate(params):
        if not isinstance(param, dict):
            return f"jobParams[{index}] must be an object"
        name, value = param.get("name"), param.get("value")
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            return f"jobParams[{index}].name must be a string of 1 to 64 characters"
        if not isinstance(value, str) or len(value) > 1024:
            return f"jobParams[{index}].value must be a string of at most 1024 characters"
        # The API calls the field paramType; the official SDK's JobParam calls it type.
        param_type = param.get("paramType", param.get("type"))
        if param_type is not None and param_type not in _PARAM_TYPES:
            return f"jobParams[{index}].paramType must be variable or constants"
    return None
