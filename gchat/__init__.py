"""gchat: the broadcast chat server of gopl.io ch8/chat, rebuilt on gevent.

The book's exercises 8.12-8.15 (roster, idle timeout, names, slow clients)
are built in; ``--compat`` gives the seed's behaviour byte for byte.
"""

__version__ = "0.1.0"

from gchat.config import Config  # noqa: E402  (after __version__, which setup.py reads)

__all__ = ["Config", "__version__"]
