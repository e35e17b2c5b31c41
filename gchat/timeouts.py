"""Exercise 8.13's clock rules for one reader, as a pure function."""

from typing import Optional

from gchat.events import Why


def next_wait(
    now: float, named: bool, name_deadline: Optional[float], last_heard: float, idle: float
) -> tuple[Optional[str], Optional[float]]:
    """What a reader does next: (why, None) when a deadline has passed, else
    (None, seconds to wait for input, or None for no limit).

    An unnamed client has until name_deadline (None: no limit) to give a
    name.  A named one is idle after `idle` seconds (0: never) without
    input.  The hub accepts a name while the reader is waiting, without
    waking it; so an unnamed client's wait is cut to the idle deadline that
    its (possible) name line started, and the next call sees it named.
    """
    idle_left = last_heard + idle - now if idle else None
    if not named:
        # Wake at the name deadline, and at the idle deadline that a name
        # line would have started (or one idle period on, if it has passed).
        waits = []
        if name_deadline is not None:
            if name_deadline <= now:
                return Why.NAME_TIMEOUT, None
            waits.append(name_deadline - now)
        if idle_left is not None:
            waits.append(idle_left if idle_left > 0 else idle)
        return None, min(waits) if waits else None
    if idle_left is None:
        return None, None
    if idle_left <= 0:
        return Why.IDLE, None
    return None, idle_left
