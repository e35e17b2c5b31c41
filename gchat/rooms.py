"""The registry of rooms: finding, making and dropping them within
--max-rooms.  Pure: no sockets, no gevent, no clock.

Every room counts against max_rooms, the lobby and the empty rooms too,
because an empty room still holds its history.  The empty rooms are kept
in the order in which they emptied, which is the order of their last use
(nothing happens in an empty room).  When a new room is needed and
max_rooms exist, the least recently used empty room is dropped, history
and all; when none is empty the new room is refused.  The lobby is never
dropped.
"""

import secrets
from collections import OrderedDict
from collections.abc import Callable
from heapq import nlargest
from typing import Optional

from gchat import protocol as p
from gchat.config import Config
from gchat.room import Room

LOBBY = "lobby"


class RoomRegistry:
    def __init__(
        self,
        config: Config,
        dirty: list[Room],
        holding: set[Room],
        new_epoch: Optional[Callable[[], str]] = None,
    ) -> None:
        """dirty and holding: shared with every room (see Room); new_epoch:
        a fresh random word for each room made, which its line ids carry
        (sessions.py): a room made again after it was dropped never gives
        the ids of its former self."""
        self.config = config
        self.new_epoch = new_epoch or (lambda: secrets.token_hex(4))
        self._dirty = dirty
        self._holding = holding
        self.rooms: dict[str, Room] = {}  # name_key -> Room
        # name_key -> Room, least recently used first
        self.empty: OrderedDict[str, Room] = OrderedDict()
        self.dropped = 0  # empty rooms dropped to make way (for /stats)
        self.lobby = self._make(LOBBY)

    def __len__(self) -> int:
        return len(self.rooms)

    def get(self, key: str) -> Optional[Room]:
        return self.rooms.get(key)

    def _make(self, name: str) -> Room:
        key = p.name_key(name)
        room = self.rooms[key] = Room(name, key, self.config, self._dirty, self._holding)
        room.out.epoch = self.new_epoch()
        return room

    def can_create(self) -> bool:
        """Whether create() would make a room now."""
        return len(self.rooms) < self.config.max_rooms or bool(self.empty)

    def create(self, name: str) -> Optional[Room]:
        """A new room called name, or None when max_rooms rooms exist and
        none of them is empty."""
        if len(self.rooms) >= self.config.max_rooms:
            if not self.empty:
                return None
            _, victim = self.empty.popitem(last=False)
            del self.rooms[victim.key]
            self.dropped += 1
        return self._make(name)  # the caller puts someone in it at once

    def ensure(self, name: str) -> Room:
        """The room called name, made if need be even past max_rooms: in a
        cluster (cluster.py) every node mirrors the rooms the others made,
        and the node that made one checked the limit against the same
        rooms."""
        room = self.rooms.get(p.name_key(name))
        if room is None:
            room = self.create(name) or self._make(name)
        return room

    def occupied(self, room: Room) -> None:
        """Someone is in room now."""
        self.empty.pop(room.key, None)

    def vacated(self, room: Room) -> None:
        """Someone left room; if it is empty now it may be dropped later."""
        if room.size == 0 and room is not self.lobby:
            self.empty[room.key] = room
            self.empty.move_to_end(room.key)

    def listing(
        self, own: Room, limit: int, visible: Optional[Callable[[str], bool]] = None
    ) -> str:
        """The /rooms line: own room first, then the fullest, at most limit
        rooms shown, the total exact; visible: the rooms the asker may see
        (by name), None for all."""
        others = [
            room
            for room in self.rooms.values()
            if room is not own and (visible is None or visible(room.name))
        ]
        shown = [own] + nlargest(limit - 1, others, key=lambda room: room.size)
        return p.render_rooms(
            [(room.name, room.size, room is own) for room in shown[:limit]], total=len(others) + 1
        )
