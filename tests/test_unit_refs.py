"""Distributed reference counting rules, without processes."""
import pytest

from luminary._private.worker.refs import ReferenceTable

pytestmark = pytest.mark.timeout(20)
ME, OTHER = "unix:/me", "unix:/other"


def test_owned_object_freed_when_last_local_ref_goes():
    t = ReferenceTable(ME)
    t.add_local(b"x", ME)
    t.add_local(b"x", ME)
    acts = []
    t.remove_local(b"x", acts)
    assert acts == []
    t.remove_local(b"x", acts)
    assert acts == [("free", b"x")]


def test_submitted_task_keeps_argument_alive():
    t = ReferenceTable(ME)
    t.add_local(b"x", ME)
    t.add_submitted([b"x"], [ME])
    acts = []
    t.remove_local(b"x", acts)
    assert acts == []                       # a pending task still needs it
    t.remove_submitted([b"x"], acts)
    assert acts == [("free", b"x")]


def test_borrowers_keep_owned_object_alive():
    t = ReferenceTable(ME)
    t.add_local(b"x", ME)
    assert t.add_borrower(b"x", OTHER)
    acts = []
    t.remove_local(b"x", acts)
    assert acts == []
    t.remove_borrower(b"x", OTHER, acts)
    assert acts == [("free", b"x")]


def test_borrower_tells_owner_when_done_only_if_registered():
    t = ReferenceTable(ME)
    t.add_local(b"y", OTHER)
    assert t.needs_registration(b"y")
    t.mark_registered(b"y")
    acts = []
    t.remove_local(b"y", acts)
    assert acts == [("unborrow", b"y", OTHER)]


def test_refs_inside_an_object_live_as_long_as_it_does():
    t = ReferenceTable(ME)
    t.add_local(b"outer", ME)
    t.add_local(b"inner", ME)
    t.set_contains(b"outer", [(b"inner", ME)])
    acts = []
    t.remove_local(b"inner", acts)
    assert acts == []                       # still reachable through outer
    t.remove_local(b"outer", acts)
    assert acts == [("free", b"outer"), ("free", b"inner")]
    t.validate()
    assert t.entries == {}


def test_borrowed_ref_inside_owned_object_is_unborrowed_with_it():
    t = ReferenceTable(ME)
    t.add_local(b"outer", ME)
    t.set_contains(b"outer", [(b"b", OTHER)])
    t.mark_registered(b"b")
    acts = []
    t.remove_local(b"outer", acts)
    assert acts == [("free", b"outer"), ("unborrow", b"b", OTHER)]
