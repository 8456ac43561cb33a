"""A pushed call's state in the worker: claim, finish, cancel and bounce race safely."""
import threading

import pytest

from luminary._private.worker.execution import ExecState, ExecTask

pytestmark = pytest.mark.timeout(30)


def call():
    return ExecTask({"name": "f"}, None, 1)


def test_cancel_before_running_answers_and_it_never_runs():
    t = call()
    assert t.cancel() == "answer"
    assert t.state == ExecState.CANCELLED
    assert not t.claim()
    assert t.cancel() is None and not t.bounce()


def test_cancel_while_running_interrupts_and_it_finishes():
    t = call()
    assert t.claim()
    assert t.cancel() == "interrupt" and t.cancel_requested
    assert not t.bounce()
    t.finish()
    assert t.state == ExecState.FINISHED and t.cancel() is None


def test_bounce_only_before_running():
    t = call()
    assert t.bounce() and t.state == ExecState.BOUNCED
    assert not t.claim()
    with pytest.raises(AssertionError):
        t.finish()          # a call that never ran cannot finish


def test_claim_and_cancel_race_has_exactly_one_winner():
    for _ in range(500):
        t = call()
        results = {}
        start = threading.Barrier(2)

        def runner():
            start.wait()
            results["claimed"] = t.claim()

        def canceller():
            start.wait()
            results["cancel"] = t.cancel()
        threads = [threading.Thread(target=runner), threading.Thread(target=canceller)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if results["claimed"]:
            assert results["cancel"] == "interrupt" and t.state == ExecState.RUNNING
        else:
            assert results["cancel"] == "answer" and t.state == ExecState.CANCELLED
