"""The document workers: every PDFium call of the server runs in a worker process, never in the server.

A PDF is untrusted input to a large C library: a 0.5 MB file inflated to 512 MB raised the server's
peak memory by 1.1 GB, and a 64 KB file whose 20 pages each took 2.4 s held the one PDFium lock the
server had, so another user's one-page question waited 13 s (issue 21). Here counting, reading and
rendering pages go to workers (models/pdf_worker.py) that each hold at most `memory_mb` of memory,
and spend at most `page_seconds` of CPU time on a page and `document_seconds` on reading a document.
A worker past a limit is ended and replaced on the next job; the document is refused naming the
limit, as other bad files are. Replies are a page's text or pixels, bounded: a document's text may
average TEXT_PER_PAGE characters a page, so a stream drawing millions of characters never reaches
the server either.

Fair shares: one user's jobs run one at a time (at most one worker each), and users waiting for a
worker get one in the order they asked (an asyncio queue serves its waiters first come, first served).
A worker that ends (a limit, a crash, a cancelled job) is replaced at once, in the background, so a
hostile file's sender pays for the restarts, not the next user. A long
document is read in parts of PAGES_PER_PART pages, each a job of its own, so it takes turns with
everyone else's work. With two workers or more, one user's file never makes another wait for PDFium.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from qwen_vl_utils.vision_process import MAX_RATIO

from models.images import ImageBudget, fit_to_budget
from models.pdf import DocumentRejected, PageText
from models.pdf_worker import MB, frame

log = logging.getLogger(__name__)

PAGES_PER_PART = 10  # pages per job: a long document yields its worker to other users this often
# Characters of text a document may hold per page it is allowed (`max_pages`), on average: twice a dense page
# of 8-point type, so 5 million at 500 pages. Past it the document is refused before its text fills the server.
TEXT_PER_PAGE = 10_000
# A reply is awaited this many wall seconds per CPU second the step may use: a niced worker gets about a tenth
# of a core beside busy normal-priority work (CPU weight 110 against 1024). A worker past it is stuck: ended.
WALL_PER_CPU_SECOND = 10
REPLY_SECONDS = 5  # added to every wait: a reply that needs no computing (a refusal, a page's pixels) is in by then
START_SECONDS = 60  # a worker imports PDFium and Pillow in well under a second; a cold disk under load takes longer
MAX_REPLY_BYTES = 64 * MB  # a page's text (at most TEXT_PER_PAGE x 500 characters) or pixels is far smaller
ROOT = Path(__file__).resolve().parents[1]  # where `models` is imported from, for the worker's `python -m`


class WorkerGone(Exception):
    """The worker ended (or was ended: `stuck`) before it replied."""

    def __init__(self, returncode: int | None, stuck: bool) -> None:
        super().__init__(f"document worker ended (exit code {returncode}{', stuck' if stuck else ''})")
        self.returncode, self.stuck = returncode, stuck


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.idle = False  # True between jobs: the last reply of its job was read

    @classmethod
    async def start(cls, memory_mb: int) -> _Worker:
        paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "models.pdf_worker",
            str(memory_mb),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        )
        worker = cls(process)
        try:
            await worker.reply(START_SECONDS)
        except WorkerGone as gone:
            raise RuntimeError(f"A document worker did not start ({gone}); its error is in the log above.") from None
        except BaseException:  # cancelled while it started (the pool closed)
            await worker.end()
            raise
        return worker

    async def send(self, header: dict, blob: bytes) -> None:
        self.idle = False
        try:
            self.process.stdin.write(frame(header, blob))
            await self.process.stdin.drain()
        except ConnectionError:  # it ended while idle (the system's OOM killer, an operator)
            raise await self._gone() from None

    async def reply(self, seconds: float) -> tuple[dict, bytes]:
        """The next reply, within `seconds` of wall time; WorkerGone if the worker ends first (or is ended then)."""
        stdout = self.process.stdout
        try:
            async with asyncio.timeout(seconds):
                header = json.loads(await stdout.readexactly(_checked(await stdout.readexactly(4))))
                blob = await stdout.readexactly(_checked(header["blob"]))
        except asyncio.IncompleteReadError:  # its end closed the pipe
            raise await self._gone() from None
        except (TimeoutError, ValueError, KeyError):  # stuck, or not speaking the protocol
            await self.end()
            raise WorkerGone(self.process.returncode, stuck=True) from None
        self.idle = bool(header["last"])
        return header, blob

    async def end(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()

    async def _gone(self) -> WorkerGone:
        """What ended the worker. It is left to exit by itself: killing it now would have Popen reap it first,
        and asyncio's child watcher would then report exit code 255, not the signal that ended it."""
        try:
            async with asyncio.timeout(REPLY_SECONDS):
                await self.process.wait()
        except TimeoutError:  # it closed its pipes but lives on
            await self.end()
        return WorkerGone(self.process.returncode, stuck=False)


def _checked(size: bytes | int) -> int:
    size = int.from_bytes(size, "big") if isinstance(size, bytes) else size
    if not 0 <= size <= MAX_REPLY_BYTES:
        raise ValueError(f"a reply of {size} bytes")
    return size


@dataclass
class _Turn:
    """One user's place: their jobs take the lock one at a time."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    jobs: int = 0


@dataclass
class _Budget:
    """One document's limits, counted across its jobs: CPU seconds left, and characters of text."""

    seconds: float
    max_chars: int
    chars: int = 0  # read so far

    @property
    def chars_left(self) -> int:
        return self.max_chars - self.chars


Progress = Callable[[int, int], Awaitable[None]]  # (first page of the part about to be read, pages in all)


class PdfPool:
    """`workers` worker processes, started with the first job. One that ends is replaced at once, in the
    background, so the next job, whoever's, finds a worker ready rather than waiting for one to start."""

    def __init__(self, workers: int, memory_mb: int, page_seconds: float, document_seconds: float) -> None:
        self.workers, self.memory_mb = workers, memory_mb
        self.page_seconds, self.document_seconds = page_seconds, document_seconds
        # Idle workers, taken first come, first served; a worker that failed to start is its error.
        self._idle: asyncio.Queue[_Worker | RuntimeError] = asyncio.Queue()
        self._starting: set[asyncio.Task] = set()
        self._started = self._closed = False
        self._turns: dict[str, _Turn] = {}

    async def read(self, owner: str, data: bytes, max_pages: int, progress: Progress | None = None) -> list[PageText]:
        """Every page's text and size, read in parts as `owner`'s jobs. Raises DocumentRejected for a file
        that cannot be used or that passes a limit."""
        budget = _Budget(self.document_seconds, max_chars=max_pages * TEXT_PER_PAGE)
        total, _ = await self._read_part(owner, data, max_pages, budget, 1, 0)
        pages: list[PageText] = []
        for first in range(1, total + 1, PAGES_PER_PART):
            if progress is not None:
                await progress(first, total)
            _, part = await self._read_part(owner, data, max_pages, budget, first, first + PAGES_PER_PART - 1)
            pages += part
        return pages

    async def render_page(self, owner: str, data: bytes, number: int, budget: ImageBudget) -> Image.Image:
        """Page `number` (1-based) of a document read before, as the model will see it: RGB, within the
        pixel budget. Raises DocumentRejected if drawing it passes a limit."""
        job = {"job": "render", "number": number, "max_pixels": budget.max_pixels, "max_ratio": MAX_RATIO}
        async with self._worker(owner) as worker:
            await worker.send({**job, "seconds": self.page_seconds}, data)
            slow = DocumentRejected("pdf_page_too_slow", page=number, limit=self.page_seconds)
            header, pixels = await self._reply(worker, self.page_seconds, slow)
        size = (header["width"], header["height"])
        if len(pixels) != size[0] * size[1] * 3:  # not what a worker draws (and MAX_REPLY_BYTES bounds what it can)
            raise DocumentRejected("pdf_damaged")
        image = Image.frombytes("RGB", size, pixels)
        return await asyncio.to_thread(fit_to_budget, image, budget)

    async def close(self) -> None:
        """End the workers, and start no more: the idle ones now, a busy one when its job ends."""
        self._closed = True
        for task in self._starting:
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        while not self._idle.empty():
            if isinstance(worker := self._idle.get_nowait(), _Worker):
                await worker.end()

    async def _read_part(
        self, owner: str, data: bytes, max_pages: int, budget: _Budget, first: int, last: int
    ) -> tuple[int, list[PageText]]:
        """The document's page count, and pages `first` to `last` (none if last < first)."""
        too_slow = DocumentRejected("pdf_too_slow", limit=self.document_seconds)
        if budget.seconds <= 0:
            raise too_slow
        job = {"job": "read", "max_pages": max_pages, "first": first, "last": last, "page_seconds": self.page_seconds}
        pages = []
        async with self._worker(owner) as worker:
            await worker.send({**job, "seconds_left": budget.seconds, "chars_left": budget.chars_left}, data)
            opened, _ = await self._reply(worker, budget.seconds, too_slow, budget)
            budget.seconds -= opened["cpu"]
            for number in range(first, min(last, opened["pages"]) + 1):
                # The step's timer is the page limit, or what is left of the document's if that is less.
                slow = DocumentRejected("pdf_page_too_slow", page=number, limit=self.page_seconds)
                seconds = min(self.page_seconds, budget.seconds)
                reply, _ = await self._reply(
                    worker, seconds, slow if seconds == self.page_seconds else too_slow, budget
                )
                page = PageText(**reply["page"])
                budget.seconds, budget.chars = budget.seconds - reply["cpu"], budget.chars + len(page.text)
                pages.append(page)
        return opened["pages"], pages

    async def _reply(
        self, worker: _Worker, seconds: float, slow: DocumentRejected, budget: _Budget | None = None
    ) -> tuple[dict, bytes]:
        """The worker's next reply to a step allowed `seconds` of CPU time. Raises DocumentRejected: `slow` if
        its timer ended it (or it was stuck), the memory limit if PDFium aborted (it does when an allocation
        fails), damaged for any other end; or the refusal the worker replied, naming this pool's limits."""
        try:
            header, blob = await worker.reply(REPLY_SECONDS + max(seconds, 0) * WALL_PER_CPU_SECOND)
        except WorkerGone as gone:
            if gone.stuck or gone.returncode == -signal.SIGPROF:
                raise slow from None
            if gone.returncode == -signal.SIGABRT:
                raise DocumentRejected("pdf_too_much_memory", limit_mb=self.memory_mb) from None
            log.warning("A document worker ended reading a PDF (exit code %s): refused as damaged", gone.returncode)
            raise DocumentRejected("pdf_damaged") from None
        if (reason := header.get("rejected")) is not None:
            limits = {
                "pdf_too_slow": {"limit": self.document_seconds},
                "pdf_too_much_memory": {"limit_mb": self.memory_mb},
            }
            if budget is not None:
                limits["pdf_too_much_text"] = {"limit": budget.max_chars}
            raise DocumentRejected(reason, **limits.get(reason, header["details"]))
        return header, blob

    @asynccontextmanager
    async def _worker(self, owner: str) -> AsyncIterator[_Worker]:
        """A worker for one job of `owner`'s, once none of their other jobs runs and a worker is idle. It goes
        back to the pool if the job read its last reply; otherwise (a failure, a cancelled job) it is ended
        and replaced."""
        if not self._started:
            self._started = True
            for _ in range(self.workers):
                self._replace()
        turn = self._turns.setdefault(owner, _Turn())
        turn.jobs += 1
        try:
            async with turn.lock:
                worker = await self._idle.get()
                if isinstance(worker, RuntimeError):
                    self._replace()  # try again for the next job
                    raise worker
                try:
                    yield worker
                finally:
                    if worker.idle and not self._closed:
                        self._idle.put_nowait(worker)
                    else:
                        await worker.end()
                        self._replace()
        finally:
            turn.jobs -= 1
            if not turn.jobs:
                del self._turns[owner]

    def _replace(self) -> None:
        """Start a worker in the background, into the idle queue (unless the pool is closed)."""
        if self._closed:
            return
        task = asyncio.create_task(self._start())
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start(self) -> None:
        try:
            self._idle.put_nowait(await _Worker.start(self.memory_mb))
        except RuntimeError as failure:
            log.error("%s", failure)
            self._idle.put_nowait(failure)
