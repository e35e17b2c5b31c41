"""next_wait: the idle and name deadlines of one reader (pure)."""

from gchat.events import Why
from gchat.timeouts import next_wait


def test_named_client_waits_until_its_idle_deadline():
    assert next_wait(now=10, named=True, name_deadline=None, last_heard=8, idle=5) == (None, 3)


def test_named_client_past_its_idle_deadline_is_idle():
    assert next_wait(now=14, named=True, name_deadline=None, last_heard=8, idle=5) == (
        Why.IDLE,
        None,
    )


def test_no_idle_limit_means_no_wake_up():
    assert next_wait(now=99, named=True, name_deadline=None, last_heard=0, idle=0) == (None, None)


def test_unnamed_client_past_the_name_deadline_times_out():
    assert next_wait(now=61, named=False, name_deadline=60, last_heard=0, idle=300) == (
        Why.NAME_TIMEOUT,
        None,
    )


def test_unnamed_client_wakes_at_the_idle_deadline_a_name_line_would_start():
    """The name may be accepted while the reader waits; the earlier of the
    name deadline and the idle deadline comes first."""
    assert next_wait(now=10, named=False, name_deadline=60, last_heard=9, idle=5) == (None, 4)
    assert next_wait(now=10, named=False, name_deadline=12, last_heard=9, idle=5) == (None, 2)


def test_unnamed_client_is_never_idle_but_is_checked_again():
    """An unnamed, silent client is the name timeout's business; with that
    off it is looked at again every idle period, in case it got a name."""
    assert next_wait(now=100, named=False, name_deadline=None, last_heard=0, idle=5) == (None, 5)
    assert next_wait(now=100, named=False, name_deadline=None, last_heard=0, idle=0) == (None, None)
