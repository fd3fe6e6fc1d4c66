"""The shared vocabulary (`launcher.models`): one definition of each word, read the same
by the dispatcher that writes it and the fold, reports and resume that read it."""

from __future__ import annotations

import sys
from typing import get_args, get_type_hints

import pytest

import launcher.flow.dispatch as dispatch
import launcher.flow.policy as policy
import launcher.loadtest.schedule as schedule
from launcher.dlf.transport import Answer, AnswerFields
from launcher.ledger import state
from launcher.ledger.report import OUTCOMES
from launcher.manifest.records import _Param
from launcher.models import (
    NOT_SENT,
    STANDINGS,
    Job,
    JobFields,
    JobParam,
    JobParamFields,
    Outcome,
    RecordedVerdict,
    Reply,
    ReplyFields,
    Standing,
    Verdict,
    from_fields,
)


def recorded_verdicts() -> set[str]:
    """Every value a `result` event's `verdict` may hold, from its type."""
    values: set[str] = set()
    for member in get_args(RecordedVerdict):
        values.update(get_args(member) or [str(verdict) for verdict in member])
    return values


def test_not_sent_is_a_recorded_verdict_but_no_classification() -> None:
    assert NOT_SENT == "not_sent"
    assert NOT_SENT in recorded_verdicts()
    assert NOT_SENT not in {str(verdict) for verdict in Verdict}
    assert recorded_verdicts() == {str(verdict) for verdict in Verdict} | {NOT_SENT}


def test_the_fold_knows_every_recorded_verdict_at_a_fixed_index() -> None:
    """The fold's verdict table starts with every verdict the launcher writes (in the
    order snapshots and worker parts were written with), as plain strings."""
    known = state.KNOWN_VERDICTS
    assert known[0] == "intent"
    assert known[-1] == "?"
    assert set(known[1:-1]) == recorded_verdicts()
    assert known == (
        "intent",
        "started",
        "permanent",
        "refresh_auth",
        "auth_failed",
        "throttled",
        "transient",
        "ambiguous",
        "not_sent",
        "tls_failed",
        "?",
    )
    assert all(type(verdict) is str for verdict in known)


def test_not_taken_and_permanent_partition_the_verdicts_that_settle_nothing() -> None:
    assert all(type(verdict) is str for verdict in state.NOT_TAKEN | state.PERMANENT)
    assert recorded_verdicts() >= state.NOT_TAKEN | state.PERMANENT
    assert not state.NOT_TAKEN & state.PERMANENT
    # Every classification that may be resent unchecked is "not taken"; ambiguous never is.
    for verdict in Verdict:
        resend_unchecked = verdict.retryable and verdict is not Verdict.AMBIGUOUS
        assert (verdict in state.NOT_TAKEN) == (resend_unchecked or verdict is Verdict.TLS_FAILED)


def test_outcomes_and_standings_are_the_types_values() -> None:
    assert state.OUTCOME_NAMES[1:] == get_args(Outcome)
    assert set(state.OUTCOME_CODES) == set(get_args(Outcome))
    assert STANDINGS == get_args(Standing) == OUTCOMES
    assert set(get_args(Outcome)) < set(STANDINGS)


def test_the_started_global_is_the_enum_member_everywhere_it_is_read() -> None:
    """`policy.STARTED` is the one enum member kept as a module global (a global read is
    ~7x faster than a member read in Python 3.11, benchmarks/RESULTS.md): it must be the
    member itself, so `verdict is STARTED` means `verdict is Verdict.STARTED`."""
    assert policy.STARTED is Verdict.STARTED
    assert dispatch.STARTED is Verdict.STARTED
    assert schedule.STARTED is Verdict.STARTED
    for status in (200, 201, 204, 299):
        assert policy.classify(Reply(status, 0.0)) is Verdict.STARTED
    assert policy.classify(Reply(503, 0.0)) is not Verdict.STARTED


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        (Reply, ReplyFields),
        (Job, JobFields),
        (JobParam, JobParamFields),
        (Answer, AnswerFields),
        (JobParam, _Param),
    ],
)
def test_each_fields_type_is_its_classes_fields_in_order(cls: type, fields: object) -> None:
    """`from_fields(Cls, fields)` skips the named tuple's `__new__`: the annotation on
    `fields` is all mypy checks, so it must list the class's fields, types and order."""
    hints = get_type_hints(cls, vars(sys.modules[cls.__module__]))
    assert list(hints) == list(cls._fields)
    assert tuple(hints.values()) == get_args(fields)


def test_from_fields_builds_what_the_class_builds() -> None:
    fields: ReplyFields = (503, 0.5, "APIG.0202", "busy", "r-1", None, 2.0, None, None)
    built = from_fields(Reply, fields)
    assert type(built) is Reply
    assert built == Reply(*fields)
    assert built.retry_after == 2.0
    param = from_fields(JobParam, ("p", "v", None))
    assert type(param) is JobParam
    assert param == JobParam("p", "v")
