"""One document worker: a process that runs PDFium (models/pdf.py) for the server's pool (models/pdf_pool.py).

A PDF is untrusted input to a large C library: a 0.5 MB file can inflate to gigabytes, and a page can
take seconds to parse. A worker holds that cost away from the server, within limits the kernel enforces:
- its address space is capped (RLIMIT_AS): past it an allocation fails, and PDFium then aborts the
  process (SIGABRT), which the pool reports as the memory limit;
- each step (opening a document, reading or rendering a page) runs under a CPU-time timer (ITIMER_PROF)
  whose signal, SIGPROF, keeps its default action: the kernel ends the process, even inside PDFium's C
  code, where no Python handler could run;
- it runs at a lower priority (nice), so the server and its model come first on a busy machine;
- it writes no core dumps: a dump of a worker stopped at its memory limit would be that large.

The protocol, on stdin and stdout, one job at a time: a frame is a 4-byte big-endian length, a JSON
header of that length, then the `blob` bytes the header counts (the document; a rendered page's
pixels). Replies are JSON and raw bytes, never pickles, so even a worker that a hostile file took
over cannot make the server run code by what it sends back. The last reply of a job says `last`.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import BinaryIO, TypeVar

from models.pdf import DocumentRejected, open_pdf, page_text, render_page

MB = 1024 * 1024
NICENESS = 10  # a CPU weight of 110 against the server's 1024: PDF reading yields to answering


T = TypeVar("T")
Frame = tuple[dict, bytes]


def frame(header: dict, blob: bytes = b"") -> bytes:
    """One message of the protocol: the header (with the blob's length) and the blob."""
    encoded = json.dumps({**header, "blob": len(blob)}, ensure_ascii=False).encode()
    return len(encoded).to_bytes(4, "big") + encoded + blob


def main() -> None:
    """Serve jobs until the server closes the pipe (it stopped, or ended this worker)."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything PDFium or a library prints goes to the log, never into a reply
    _limit(int(sys.argv[1]))
    _send(replies, {"ready": True, "last": True})
    while (job := _receive(sys.stdin.buffer)) is not None:
        header, data = job
        for reply in (_read if header["job"] == "read" else _render)(header, data):
            _send(replies, *reply)


def _limit(memory_mb: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * MB, memory_mb * MB))
    os.nice(NICENESS)


def _read(job: dict, data: bytes) -> Iterator[Frame]:
    """Open the document (under what is left of its CPU time), reply its page count, then read pages
    `first` to `last` (each under the page limit too), one reply each, within the characters left."""
    left, chars = job["seconds_left"], job["chars_left"]

    def step(work: Callable[[], T], limit: float = math.inf) -> tuple[T, float]:
        nonlocal left
        if left <= 0:
            raise DocumentRejected("pdf_too_slow")
        done, used = _timed(min(limit, left), work)
        left -= used
        return done, used

    try:
        document, used = step(lambda: open_pdf(data, job["max_pages"]))
        try:
            numbers = range(job["first"], min(job["last"], len(document)) + 1)
            yield {"pages": len(document), "cpu": used, "last": not numbers}, b""
            for number in numbers:
                page, used = step(lambda n=number: page_text(document, n), job["page_seconds"])
                chars -= len(page.text)
                if chars < 0:
                    raise DocumentRejected("pdf_too_much_text")
                yield {"page": asdict(page), "cpu": used, "last": number == numbers[-1]}, b""
        finally:
            document.close()
    except DocumentRejected as rejected:
        yield _rejected(rejected.reason, rejected.details)
    except MemoryError:  # a Python allocation past the limit; PDFium's own end the process
        yield _rejected("pdf_too_much_memory")


def _render(job: dict, data: bytes) -> Iterator[Frame]:
    """Page `number` rendered within `max_pixels`, as raw RGB, all within the page limit."""

    def draw():
        document = open_pdf(data)
        try:
            return render_page(document, job["number"], job["max_pixels"], job["max_ratio"])
        finally:
            document.close()

    try:
        image, _ = _timed(job["seconds"], draw)
    except DocumentRejected as rejected:
        yield _rejected(rejected.reason, rejected.details)
    except MemoryError:
        yield _rejected("pdf_too_much_memory")
    else:
        yield {"width": image.width, "height": image.height, "last": True}, image.tobytes()


def _timed(seconds: float, work: Callable[[], T]) -> tuple[T, float]:
    """`work()` and the CPU seconds it took; the kernel ends this process if it takes more than `seconds`."""
    started = time.process_time()
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        return work(), time.process_time() - started
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)


def _rejected(reason: str, details: dict | None = None) -> Frame:
    return {"rejected": reason, "details": details or {}, "last": True}, b""


def _send(out: BinaryIO, header: dict, blob: bytes = b"") -> None:
    out.write(frame(header, blob))
    out.flush()


def _receive(stream: BinaryIO) -> Frame | None:
    """The next job, or None once the server has closed the pipe."""
    size = stream.read(4)
    if len(size) < 4:
        return None
    header = json.loads(stream.read(int.from_bytes(size, "big")))
    return header, stream.read(header["blob"])


if __name__ == "__main__":
    main()
