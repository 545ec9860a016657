"""Resuming without loss across reconnects, sans-I/O: what to ask for, what to hold, what to deliver.

After every (re)connect a client subscribes again and then asks for history
since the last ``coremq_id`` it delivered per queue
(``{"coremq_gethistory": {queue: since}}``). Until the reply comes, live
deliveries of those queues are held back; then the stored messages and the
held ones are merged by id, what was delivered before is dropped, and the
rest is delivered in order. From then on a live delivery whose id is not
above the last one delivered is a duplicate and is dropped (the broker may
send a message live after a history reply that already held it).

What can no longer be delivered is reported as a :class:`~coremq_client.protocol.Gap`:

- messages that left the queue's history before the client came back: the
  first id still stored is above the next one expected;
- a queue whose numbering started again (a broker restart lost a queue that
  is not durable): the sequence's ``last`` is below the id delivered, or the
  stored message with that id is not the one delivered (its ``coremq_sent``
  differs). The client then asks for the new numbering's whole history.

The broker's slow-consumer policy ``drop`` has the same cure: when it drops
messages a connection read too slowly, it says which ids
(``{"dropped": {queue: {"first", "last"}}}``); :meth:`Resumer.dropped` starts
the same resync of those queues on the live connection, so the dropped
messages are fetched from history and delivered in order, and only those
history no longer holds become a gap. A drop noticed while a queue is being
resynced asks for one more history reply once the current one is complete,
since that reply may have been taken before the drop.

While a queue is resynced, at most ``max_held`` live deliveries are held
for it; later ones are let go: the history reply that ends the resync holds
them too (it is taken after they were published, and the newest messages
leave a history last), unless they already left the history: then they are
part of the gap it reports.

A queue with nothing delivered yet is *probed*: ``since`` is :data:`PROBE`,
so the reply holds no messages, only the sequence, whose ``last`` becomes
the point to resume from (no live delivery is held or dropped because of it).

:class:`Resumer` keeps this state for one client. It does no I/O: a front end
sends the history requests that :meth:`Resumer.plan` asks for, feeds it every
live delivery (:meth:`Resumer.accept`) and the replies to those requests
(:meth:`Resumer.history`, :meth:`Resumer.failed`), and delivers and reports
what they return. Safe to share between threads.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from .protocol import Delivery, Gap

__all__ = ["PROBE", "RESUME_PAGE", "Item", "Resumer", "bounds"]

#: ``since`` that asks for no stored message, only the queue's sequence.
PROBE = 2**53 - 1

#: Messages per queue in one history reply of a resume (its ``limit``): a long
#: resume comes in pages, each well under the default frame limit for messages
#: of a few KB, while live deliveries stay held until the last page.
RESUME_PAGE = 100

#: How many of this client's connection ids are remembered, to recognise its
#: own publishes in history (they are not delivered to it without ``echo``).
OWN_IDS = 64

#: What the resumer hands back, in order: deliveries, and gaps to report.
Item = Delivery | Gap


@dataclass(slots=True)
class _Mark:
    """Where a queue's stream stands for this client."""

    id: int
    sent: float | None = None  # coremq_sent of the message delivered, to recognise it again
    delivered: bool = True  # False: a probe's starting point; nothing was delivered


class Resumer:
    """The per-queue marks, held deliveries and pending gaps of one client.

    With ``enabled`` false it only records the last id delivered per queue
    (:attr:`last_ids`), passes every delivery through and reports dropped
    ids as gaps. ``max_held`` bounds the live deliveries held per queue
    while it is resynced (None: no bound).
    """

    def __init__(self, *, enabled: bool = True, max_held: int | None = None) -> None:
        self.enabled = enabled
        self.max_held = max_held
        self._lock = threading.Lock()
        self._marks: dict[str, _Mark] = {}
        self._held: dict[str, list[Delivery]] = {}  # queues being resynced: live deliveries held meanwhile
        self._drops: dict[str, int | None] = {}  # dropped while resynced: the last id dropped (None: unknown)
        self._restarted: set[str] = set()  # numbering restarted; asking for the new one
        self._gaps: dict[str, Gap] = {}  # reported, to mark the queue's next delivery with
        self._watch: dict[str, int] = {}  # history was empty: the next id expected live
        self._own: deque[str] = deque(maxlen=OWN_IDS)

    @property
    def last_ids(self) -> dict[str, int]:
        """The ``coremq_id`` of the last message delivered, per queue."""
        with self._lock:
            return {queue: mark.id for queue, mark in self._marks.items() if mark.delivered}

    def connected(self, connection_id: str) -> None:
        """Remember a connection id of this client (its publishes carry it as sender).

        The private queues of its earlier connections (``<id>`` and ``<id>/...``)
        are gone, and so is what was noted about them.
        """
        with self._lock:
            earlier = set(self._own)
            for queue in [q for q in self._marks if q.partition("/")[0] in earlier]:
                del self._marks[queue]
            self._own.append(connection_id)

    def forget(self, queues: Iterable[str]) -> None:
        """Drop all state of ``queues`` (unsubscribed, or subscribed afresh): nothing held is delivered."""
        with self._lock:
            for queue in queues:
                self._marks.pop(queue, None)
                self._held.pop(queue, None)
                self._gaps.pop(queue, None)
                self._watch.pop(queue, None)
                self._drops.pop(queue, None)
                self._restarted.discard(queue)

    def plan(self, queues: Iterable[str]) -> dict[str, int]:
        """``{queue: since}`` to ask history for, right after (re)subscribing ``queues``.

        Queues with a mark are resynced, and their live deliveries are held
        from now until the reply is given to :meth:`history` or :meth:`failed`;
        the others are probed. Empty when resume is off.
        """
        if not self.enabled:
            return {}
        since: dict[str, int] = {}
        with self._lock:
            for queue in queues:
                mark = self._marks.get(queue)
                if mark is None:
                    since[queue] = PROBE
                    continue
                self._drops.pop(queue, None)  # this request is taken after any drop noticed
                since[queue] = self._resync(queue, mark)
        return since

    def dropped(self, notice: Mapping[str, Any], subscribed: Iterable[str]) -> tuple[list[Item], dict[str, int]]:
        """The broker dropped these ids (``{queue: {"first": id, "last": id}}``, a drop notice's ``dropped``).

        Returns the gaps to report (when resume is off, and for queues not
        in ``subscribed``, such as the connection's private ``<id>/...``
        queues: their dropped ids are lost) and ``{queue: since}`` to ask
        history for, as
        :meth:`plan` does: live deliveries of those queues are held from now
        until the reply is given to :meth:`history` or :meth:`failed`.
        Queues already being resynced get one more history request when
        their current one completes.
        """
        items: list[Item] = []
        since: dict[str, int] = {}
        resumed = set(subscribed) if self.enabled else set()
        with self._lock:
            for queue, span in notice.items():
                first, last = bounds(span if isinstance(span, dict) else {})
                if queue not in resumed:
                    if first is not None and last is not None:
                        items.append(self._gap(Gap(queue, first, last)))
                    continue
                if queue in self._held:
                    earlier = self._drops.get(queue, 0)
                    self._drops[queue] = None if last is None or earlier is None else max(earlier, last)
                    continue
                mark = self._marks.get(queue)
                if mark is None:
                    if first is None:
                        continue  # nothing to resume from; the notice itself is reported as an error
                    mark = self._marks[queue] = _Mark(first - 1, delivered=False)
                elif mark.delivered and last is not None and last <= mark.id:
                    continue  # already delivered (from a history reply)
                elif not mark.delivered and first is not None and first <= mark.id:
                    mark.id = first - 1  # nothing delivered yet: a probe's point may lie past the first dropped
                since[queue] = self._resync(queue, mark)
        return items, since

    def _resync(self, queue: str, mark: _Mark) -> int:
        """Start holding ``queue``'s live deliveries; the ``since`` to ask its history for."""
        self._held.setdefault(queue, [])
        # One message early: the delivered one comes back and is recognised (or not: a restart).
        fingerprint = mark.delivered and mark.sent is not None and mark.id > 0
        return mark.id - 1 if fingerprint else mark.id

    def accept(self, delivery: Delivery) -> list[Item]:
        """A live delivery: ``[]`` if it is held or a duplicate, else itself (marked with a gap before it).

        After a history that was empty, the first live delivery may reveal a
        gap: it then comes after the gap to report.
        """
        queue, number = delivery.queue, delivery.id
        if type(number) is not int:
            return [delivery]
        with self._lock:
            if self._held and queue in self._held:
                held = self._held[queue]
                if self.max_held is None or len(held) < self.max_held:
                    held.append(delivery)
                # else let go: the history reply that ends the resync holds it (the newest leave history last)
                return []
            mark = self._marks.get(queue)
            if mark is None:
                self._marks[queue] = _Mark(number, delivery.sent)
            elif self.enabled and mark.delivered and number <= mark.id:
                return []
            else:  # updated in place: this runs for every message
                mark.id, mark.sent, mark.delivered = number, delivery.sent, True
            if not (self._gaps or self._watch):
                return [delivery]
            gap = self._gaps.pop(queue, None)
            expected = self._watch.pop(queue, None)
            if expected is not None and number > expected:
                gap = _combine(gap, Gap(queue, expected, number - 1))
                return [gap, replace(delivery, gap=gap)]
        return [delivery if gap is None else replace(delivery, gap=gap)]

    def history(self, since: Mapping[str, int], reply: Mapping[str, Any], *, echo: bool = False
                ) -> tuple[list[Item], dict[str, int]]:
        """Take the reply to the history request made for ``since`` (what :meth:`plan` returned).

        Returns the items to act on in order (gaps to report, deliveries to
        queue) and ``{queue: since}`` for a follow-up history request, for
        queues whose numbering restarted, whose reply was one page of more
        (``more``; see :data:`RESUME_PAGE`) or may predate a drop noticed
        meanwhile (see :meth:`dropped`), empty if none. ``echo``: whether
        this client's own publishes are delivered to it.
        """
        history = reply.get("history")
        sequence = reply.get("sequence")
        more = reply.get("more")
        history = history if isinstance(history, dict) else {}
        sequence = sequence if isinstance(sequence, dict) else {}
        more = more if isinstance(more, dict) else {}
        items: list[Item] = []
        again: dict[str, int] = {}
        with self._lock:
            for queue, asked in since.items():
                position = sequence.get(queue)
                first, last = bounds(position if isinstance(position, dict) else {})
                if asked == PROBE:
                    if queue not in self._marks and last is not None:
                        self._marks[queue] = _Mark(last, delivered=False)
                    continue
                if queue not in self._held:
                    continue  # forgotten meanwhile
                stored = history.get(queue)
                messages = [Delivery.from_stored(queue, m) for m in stored if isinstance(m, dict)] \
                    if isinstance(stored, list) else []
                if self._numbering_restarted(queue, messages, last):
                    self._restarted.add(queue)
                    self._marks[queue] = _Mark(0, delivered=False)
                    again[queue] = 0
                    continue
                behind = self._behind_drop(queue, last)
                if more.get(queue) and not messages and not behind:
                    # Nothing of this queue fitted in this page (the broker pages replies by size): ask again.
                    again[queue] = asked
                    continue
                if (more.get(queue) and messages) or behind:
                    # One page of a longer history (or a reply that may predate a drop):
                    # deliver it, keep holding the live deliveries, and ask for the
                    # next page from where this one ended.
                    before = self._marks[queue].id
                    items += self._merge(queue, messages, first, last, echo)
                    newest = max([m.id for m in messages if isinstance(m.id, int)], default=asked)
                    if self._marks[queue].id > before or behind or (more.get(queue) and newest > asked):
                        # From where this page ended: it may hold only what was delivered before
                        # (the broker pages by size), and since still moves on, so paging ends.
                        again[queue] = max(self._marks[queue].id, newest)
                        continue
                self._drops.pop(queue, None)
                items += self._merge(queue, messages + self._held.pop(queue), first, last, echo)
        return items, again

    def failed(self, since: Mapping[str, int], *, echo: bool = False) -> list[Item]:
        """The history request made for ``since`` got no usable reply: release what was held, in order.

        What was missed cannot be fetched: the first message released (or
        the next live one) shows which ids are lost, reported as a gap. The
        caller reports the error itself.
        """
        items: list[Item] = []
        with self._lock:
            for queue in since:
                held = self._held.pop(queue, None)
                if held is not None:
                    items += self._merge(queue, held, None, None, echo, watch=True)
        return items

    # -- under the lock -----------------------------------------------------------

    def _behind_drop(self, queue: str, last: int | None) -> bool:
        """True if a drop was noticed during this resync and the reply (sequence ``last``) may predate it.

        Forgets the drop: the next request is taken after it, so its reply covers it.
        """
        if queue not in self._drops:
            return False
        dropped = self._drops[queue]
        if dropped is not None and last is not None and last >= dropped:
            return False
        del self._drops[queue]
        return True

    def _numbering_restarted(self, queue: str, messages: list[Delivery], last: int | None) -> bool:
        if queue in self._restarted:
            return False  # this is the new numbering's history
        mark = self._marks[queue]
        if last is not None and last < mark.id:
            return True
        if mark.delivered and mark.sent is not None:
            for message in messages:
                if message.id == mark.id:
                    return message.sent != mark.sent
        return False

    def _merge(self, queue: str, messages: list[Delivery], first: int | None, last: int | None,
               echo: bool, *, watch: bool = False) -> list[Item]:
        """Deliver ``messages`` (stored and held) above the mark, in id order, once; report the holes.

        With ``watch`` (or an empty history with ids up to ``last`` not seen), a
        hole before the next live delivery is reported when it comes.
        """
        mark = self._marks[queue]
        expected = mark.id + 1
        self._watch.pop(queue, None)
        restarted = queue in self._restarted
        self._restarted.discard(queue)
        by_id = {m.id: m for m in messages if isinstance(m.id, int)}
        items: list[Item] = []
        for number in sorted(by_id):
            if number < expected:
                continue
            if number > expected or restarted:
                items.append(self._gap(Gap(queue, expected, number - 1, restarted) if number > expected
                                       else Gap(queue, None, None, reset=True)))
                restarted = False
            expected = number + 1
            message = by_id[number]
            if not echo and self._is_own(message):
                self._marks[queue] = _Mark(number, message.sent)  # the broker does not echo it either
                continue
            items.append(self._deliver(queue, message))
        if not by_id and (watch or (first is None and last is not None and last >= expected)):
            # Nothing to go by (history empty: purged, or a queue that keeps none): ids up
            # to `last` may still come live; the first live delivery tells what is lost.
            self._watch[queue] = expected
        if restarted:
            items.append(self._gap(Gap(queue, None, None, reset=True)))
        return items

    def _gap(self, gap: Gap) -> Gap:
        self._gaps[gap.queue] = _combine(self._gaps.get(gap.queue), gap)
        return gap

    def _deliver(self, queue: str, delivery: Delivery) -> Delivery:
        self._marks[queue] = _Mark(delivery.id, delivery.sent)  # type: ignore[arg-type]
        gap = self._gaps.pop(queue, None)
        return delivery if gap is None else replace(delivery, gap=gap)

    def _is_own(self, delivery: Delivery) -> bool:
        sender = delivery.sender
        return isinstance(sender, str) and sender.partition("/")[0] in self._own


def bounds(position: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``(first, last)`` of a history reply's sequence entry or a drop notice's span, None where absent or not an int."""
    first, last = position.get("first"), position.get("last")
    return (first if isinstance(first, int) else None), (last if isinstance(last, int) else None)


def _combine(earlier: Gap | None, later: Gap) -> Gap:
    """The gap to mark a delivery with that follows two (say a restart, then lost ids of the new numbering)."""
    if earlier is None or later.reset:
        return later  # after a restart the ids before it mean nothing
    first = later.first_missing if earlier.reset or earlier.first_missing is None else earlier.first_missing
    return Gap(later.queue, first, later.last_missing, earlier.reset)
