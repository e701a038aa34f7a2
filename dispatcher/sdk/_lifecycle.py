"""The ``async with`` / ``async for`` plumbing shared by the SDK's consuming clients."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class CommittingIterator:
    """A client that is an async iterator and commits, on a clean exit, what it handed out.

    Leaving ``async with`` normally commits; leaving it with an exception does
    not, so the record being handled when things went wrong comes again.
    """

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self, *, commit: bool = True) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop(commit=et is None)

    def __aiter__(self) -> Self:
        return self
