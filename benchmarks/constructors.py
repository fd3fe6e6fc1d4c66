"""How to build the named tuples made per request (`Reply`, `Answer`) and per job (`Job`,
`JobParam`), in instructions: the count does not depend on the machine's load.

    python benchmarks/constructors.py            # every form, under callgrind
    python benchmarks/constructors.py job_       # the forms whose names start so
    python benchmarks/constructors.py FORM N     # one form, N times (what callgrind runs)

Each form runs N = 100,000 times and once with N = 0 (start-up alone); the difference
divided by N is its cost. Needs valgrind; run from the repository root with .venv built.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial
from itertools import repeat

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from launcher.dlf.transport import Answer
from launcher.models import Job, JobParam, Reply

_new_reply = partial(tuple.__new__, Reply)
_new_answer = partial(tuple.__new__, Answer)
_new_job = partial(tuple.__new__, Job)
_make_param = partial(tuple.__new__, JobParam)
_tuple_new = tuple.__new__
_job_params = repeat(JobParam)

status, latency, request_id, after = 200, 0.01, "req", None
headers: dict[str, str] = {}
body = b"{}"
jid, name, workspace, project, line, action = "j" * 32, "job", None, "p", 7, None
raw = [("a", "1", None), ("b", "2", "variable")]


def reply_partial() -> object:
    return _new_reply((status, latency, None, None, request_id, None, after, None, None))


def reply_tuple_new() -> object:
    return tuple.__new__(Reply, (status, latency, None, None, request_id, None, after, None, None))


def reply_alias() -> object:
    return _tuple_new(Reply, (status, latency, None, None, request_id, None, after, None, None))


def reply_class() -> object:
    return Reply(status, latency, None, None, request_id, None, after, None, None)


def answer_partial() -> object:
    return _new_answer((status, headers, body))


def answer_tuple_new() -> object:
    return tuple.__new__(Answer, (status, headers, body))


def answer_alias() -> object:
    return _tuple_new(Answer, (status, headers, body))


def answer_class() -> object:
    return Answer(status, headers, body)


def job_partial() -> object:
    params = tuple(map(_make_param, raw))
    return _new_job((jid, name, params, workspace, project, line, action))


def job_tuple_new() -> object:
    params = tuple([tuple.__new__(JobParam, param) for param in raw])
    return tuple.__new__(Job, (jid, name, params, workspace, project, line, action))


def job_alias() -> object:
    params = tuple(map(_tuple_new, _job_params, raw))
    return _tuple_new(Job, (jid, name, params, workspace, project, line, action))


def job_class() -> object:
    params = tuple([JobParam(*param) for param in raw])
    return Job(jid, name, params, workspace, project, line, action)


FORMS = {
    name: function
    for name, function in globals().items()
    if name.startswith(("reply_", "answer_", "job_")) and callable(function)
}


def instructions(form: str, count: int) -> int:
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            form,
            str(count),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise SystemExit(result.stderr)
    return int(found[1])


def main() -> None:
    if len(sys.argv) == 3:  # one form, under callgrind
        function, count = FORMS[sys.argv[1]], int(sys.argv[2])
        for _ in range(count):
            function()
        return
    count = 100_000
    prefix = sys.argv[1] if len(sys.argv) == 2 else ""
    for form in [form for form in FORMS if form.startswith(prefix)]:
        cost = (instructions(form, count) - instructions(form, 0)) / count
        print(f"{form:18} {cost:8.0f} Ir per call")


if __name__ == "__main__":
    main()
