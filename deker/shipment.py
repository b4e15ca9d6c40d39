"""Task data made and sent ahead, in a thread, while the caller does other work.

An update through a Dask client sends every tile's data to the workers (``client.scatter``)
before its tasks can run, and creates the missing tiles on this host before that: the two wait
for different things (the network, the filesystem), so :class:`Shipment` makes the data and
scatters it in a thread of its own while the caller creates the tiles.  The runner then uses
what was scattered for the first submission of the tasks (:meth:`Shipment.sent`); tasks
submitted again after a worker was lost scatter their data anew.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from deker import daskclient

__all__ = ["Shipment"]

logger = logging.getLogger(__name__)


class Shipment:
    """Values made by ``make()`` in a thread, their large arrays scattered to ``client`` there.

    Parameters
    ----------
    make : callable
        Makes the values (e.g. each tile's data, compacted for transport).
    client : distributed.Client, optional
        Where the large arrays go (see :data:`deker.daskclient.SCATTER_THRESHOLD`); ``None``:
        the values are only made.

    """

    def __init__(self, make: Callable[[], list[Any]], client: Any = None) -> None:
        self._made: list[Any] | None = None
        self._error: BaseException | None = None
        self._sent: dict[int, Any] = {}
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make, client), name="deker-ship", daemon=True)
        self._thread.start()

    def _run(self, make: Callable[[], list[Any]], client: Any) -> None:
        try:
            self._made = make()
        except BaseException as exc:  # values() raises it in the caller's thread
            self._error = exc
            return
        if client is None or self._abandoned.is_set():
            return
        try:
            sent = daskclient.scatter_ahead(client, self._made)
        except Exception as exc:  # the runner scatters them when it submits the tasks
            logger.debug("could not scatter the task data ahead: %s", exc)
            return
        if not self._abandoned.is_set():  # (abandoned meanwhile: the futures are let go)
            self._sent = sent

    def abandon(self) -> None:
        """Say the values are not needed (the operation failed): no scatter starts after this.

        Values being made are still made, and a scatter under way ends (neither can be
        interrupted), but its futures are let go at once; nothing waits for them.
        """
        self._abandoned.set()

    def values(self) -> list[Any]:
        """Wait for the values, and for their scatter (it runs after them), and return them.

        Returns
        -------
        list
            What ``make()`` returned.

        Raises
        ------
        BaseException
            What ``make()`` raised.
        """
        self._thread.join()
        if self._made is None:
            raise self._error if self._error is not None else RuntimeError("the shipment made nothing")
        return self._made

    def sent(self) -> dict[int, Any]:
        """Wait for the scatter and return its futures by the ``id`` of each array sent.

        Returns
        -------
        dict
            ``{id(array): future}`` for the large arrays among the values (empty when nothing
            was scattered).  The arrays stay alive with the shipment, so their ids do not change.
        """
        self._thread.join()
        return self._sent
