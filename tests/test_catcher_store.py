"""The catcher's store keeps its unread count as messages arrive, are read
and go (so that a list page does not count every message): after any
sequence of operations it equals a count over the messages, and a list
page is the newest first."""

from __future__ import annotations

from typing import List, Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from smtpd_compat._catcher_store import Store

ENVELOPE = {"MailFrom": "a@example.com", "RcptTos": ["b@example.com"]}

# ("add",), ("read", picks, flag), ("delete", picks); picks None = all
OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("add")),
    st.tuples(st.just("read"), st.one_of(st.none(), st.lists(st.integers(0, 30), max_size=4)), st.booleans()),
    st.tuples(st.just("delete"), st.one_of(st.none(), st.lists(st.integers(0, 30), max_size=3))),
), max_size=40)


def _ids(store: Store, picks: Optional[List[int]]) -> Optional[List[str]]:
    if picks is None:
        return None
    _, _, everything = store.page(0, 10**6, "subject:m")  # a query: the counted path
    ids = [entry.id for entry in everything]
    return [ids[i % len(ids)] for i in picks] if ids else ["no-such-id"]


@settings(max_examples=150, deadline=None)
@given(OPERATIONS, st.sampled_from([None, 5]))
def test_the_unread_count_follows_every_change(operations: List[Tuple], bound: Optional[int]) -> None:
    store = Store(bound)
    added = 0
    for operation in operations:
        if operation[0] == "add":
            added += 1
            store.add(b"Subject: m%d\r\n\r\nbody\r\n" % added, dict(ENVELOPE))
        elif operation[0] == "read":
            store.set_read(_ids(store, operation[1]), operation[2])
        else:
            store.delete(_ids(store, operation[1]))
        total, unread, page = store.page(0, 3)
        counted_total, counted_unread, everything = store.page(0, 10**6, "subject:m")
        assert (total, unread) == (counted_total, counted_unread)
        assert [entry.id for entry in page] == [entry.id for entry in everything[:3]]
        assert store.counts()["Unread"] == counted_unread
        assert total <= (bound or added)
    store.close()
