"""Reactor timers: cancelled timers release their callbacks and do not pile up."""

import gc
import threading
import time
import weakref

from smtpd_compat import _reactor


class Session:
    def fire(self):
        raise AssertionError("a cancelled timer ran")


def make_reactor():
    return _reactor.Reactor({})


def test_cancelled_timer_releases_its_callback():
    reactor = make_reactor()
    try:
        session = Session()
        ref = weakref.ref(session)
        handle = reactor.call_later(300.0, session.fire)
        handle.cancel()
        del session
        gc.collect()
        assert ref() is None, "the heap entry of a cancelled timer kept the session alive"
    finally:
        reactor.close()


def test_cancelled_timers_are_compacted():
    reactor = make_reactor()
    try:
        live = reactor.call_later(300.0, lambda: None)
        for _ in range(10000):
            reactor.call_later(300.0, lambda: None).cancel()
        assert len(reactor.timers) < 600
        assert any(entry[2] is live for entry in reactor.timers)
    finally:
        reactor.close()


def test_due_timers_run_in_order_and_cancelled_ones_do_not():
    reactor = make_reactor()
    ran = []
    try:
        reactor.call_later(0.0, lambda: ran.append("first"))
        reactor.call_later(0.0, lambda: ran.append("cancelled")).cancel()
        reactor.call_later(0.0, lambda: ran.append("second"))
        reactor.poll(0.0, lambda obj, mask: None)
        assert ran == ["first", "second"]
    finally:
        reactor.close()


def test_a_timer_months_away_does_not_overflow_the_wait():
    # epoll.poll() raises OverflowError for waits past INT_MAX milliseconds.
    reactor = make_reactor()
    try:
        reactor.call_later(1e8, lambda: None)  # about three years
        waker = threading.Timer(0.1, lambda: reactor.call_soon_threadsafe(lambda: None))
        waker.start()
        started = time.monotonic()
        reactor.poll(None, lambda obj, mask: None)
        assert time.monotonic() - started < 5
        waker.join()
        # A huge timeout from the caller is bounded the same way.
        waker = threading.Timer(0.1, lambda: reactor.call_soon_threadsafe(lambda: None))
        waker.start()
        reactor.poll(1e9, lambda obj, mask: None)
        waker.join()
    finally:
        reactor.close()
