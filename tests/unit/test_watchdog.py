"""The deadline thread of the fast GET path (store/watchdog.py)."""
import threading
import time

from cachefs.store.watchdog import Watchdog


def test_fires_at_the_deadline_in_order_and_not_when_disarmed():
    dog = Watchdog()
    fired = []
    done = threading.Event()
    t0 = time.monotonic()
    dog.arm(t0 + 0.3, lambda: (fired.append(("late", time.monotonic() - t0)), done.set()))
    dog.arm(t0 + 0.1, lambda: fired.append(("early", time.monotonic() - t0)))
    dog.disarm(dog.arm(t0 + 0.2, lambda: fired.append(("disarmed", time.monotonic() - t0))))
    assert done.wait(5)
    assert [name for name, _ in fired] == ["early", "late"]
    assert 0.09 <= fired[0][1] < 0.25 and 0.29 <= fired[1][1] < 0.6
    dog.close()


def test_an_earlier_deadline_wakes_the_thread_and_a_failing_callback_does_not_stop_it():
    dog = Watchdog()
    fired = threading.Event()
    dog.arm(time.monotonic() + 60, lambda: None)        # the thread sleeps towards this one

    def boom():
        raise OSError("socket already closed")
    dog.arm(time.monotonic() + 0.05, boom)
    t0 = time.monotonic()
    dog.arm(time.monotonic() + 0.1, fired.set)
    assert fired.wait(5) and time.monotonic() - t0 < 1.0
    dog.close()
