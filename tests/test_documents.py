"""PDF documents: read page by page by the document workers, refused with a reason when unusable or
past a worker's limits, stored once with their search index, found for a question within the asking
user's library only, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from chat.documents.reading import pdf_workers
from chat.documents.retrieval import shown_pages
from chat.settings import Settings
from chat.store.accounts import add_user
from chat.store.database import create_engine, session_factory
from chat.store.documents import LARGE_SCOPE_PAGES, Documents, PageHit
from chat.store.files import ContentStore
from chat.store.schema import Base, Document, DocumentPage, LibraryDocument
from chat.store.terms import query_terms, terms
from models.images import ImageBudget
from models.pdf import DocumentRejected, PageText
from models.pdf_pool import TEXT_PER_PAGE, PdfPool
from tests.helpers import pdfs
from tests.helpers.budgets import CPU_BUDGET, GPU_BUDGET
from tests.helpers.memory import MB, PeakMemory
from tests.helpers.server import REPO

MAX_PAGES = 200
OWNER = "reader"


@pytest.fixture(scope="module")
async def workers() -> AsyncIterator[PdfPool]:
    """The document workers within the default limits, as a server has them."""
    pool = pdf_workers(Settings())
    yield pool
    await pool.close()


# Reading ------------------------------------------------------------------------------------------


async def test_each_page_has_its_text_layer_and_size_in_english_and_korean(workers: PdfPool) -> None:
    english, facts = pdfs.facts_pdf(3, seed=0)
    pages = await workers.read(OWNER, english, MAX_PAGES)
    assert [page.number for page in pages] == [1, 2, 3]
    assert all(fact.answer in pages[fact.page - 1].text for fact in facts)
    assert (round(pages[0].width), round(pages[0].height)) == (595, 842)  # A4 in points

    korean, facts = pdfs.facts_pdf(2, seed=0, korean=True)
    pages = await workers.read(OWNER, korean, MAX_PAGES)
    assert [fact.answer in page.text for fact, page in zip(facts, pages, strict=True)] == [True, True]


async def test_tables_figures_and_scanned_pages(workers: PdfPool) -> None:
    text_page, table, figure, scanned = await workers.read(OWNER, pdfs.datasheet_pdf(), MAX_PAGES)
    assert "soft-start time is 4.2 ms" in text_page.text
    assert "Input voltage" in table.text and "28" in table.text
    assert figure.text == "Figure 3. Efficiency versus load current at 12 V input."
    assert scanned.text == "", "a scanned page has no text layer..."
    image = await workers.render_page(OWNER, pdfs.datasheet_pdf(), 4, CPU_BUDGET)
    assert image.mode == "RGB" and image.getextrema() != ((255, 255),) * 3, "...and is still seen, as an image"


async def test_korean_text_without_an_embedded_font_is_rendered_with_a_system_font(workers: PdfPool) -> None:
    """The test PDFs' Korean font (a CID font) is not embedded, like many real ones: PDFium draws it with an
    installed Korean font (Debian's fonts-nanum, which .ci/run installs); without one the page is blank."""
    fonts = (
        subprocess.run(["fc-list", ":lang=ko"], capture_output=True, text=True).stdout
        if shutil.which("fc-list")
        else ""
    )
    if not fonts.strip():
        if os.environ.get("CI"):
            pytest.fail("CI needs a Korean font: apt-get install fonts-nanum (.ci/run does)")
        pytest.skip("no Korean font installed: apt-get install fonts-nanum")
    korean = pdfs.text_pdf(["최대 공급 전압은 오 볼트입니다"], korean=True)
    image = await workers.render_page(OWNER, korean, 1, GPU_BUDGET)
    ink = sum(value < 128 for value in image.convert("L").get_flattened_data())
    assert ink > 300, "the Korean glyphs were drawn"


async def test_a_page_not_made_by_loupe(workers: PdfPool) -> None:
    pages = await workers.read(OWNER, (REPO / pdfs.EXTERNAL_PDF).read_bytes(), MAX_PAGES)
    assert len(pages) == 17 and pages[0].text.startswith("Shared MIME-info Database")
    assert 'The file starts with the magic string "MIME-Magic' in pages[8].text


@pytest.mark.parametrize("budget", [CPU_BUDGET, GPU_BUDGET])
async def test_a_page_is_rendered_within_the_pixel_budget_whatever_size_it_claims(
    workers: PdfPool, budget: ImageBudget
) -> None:
    """Drawn at its full size, the 200 x 200 inch page would take 13 GB: past the worker's memory limit, refused."""
    for width, height in [(612, 792), (14400, 14400), (14400, 200), (72, 72)]:  # letter, 200 x 200 in, a strip, 1 in
        image = await workers.render_page(OWNER, pdfs.sized_pdf(width, height), 1, budget)
        assert image.width * image.height <= budget.max_pixels
        assert budget.fitted_size(image.width, image.height) == image.size, "as the model sees it"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: b"", "empty"),
        (lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not_a_pdf"),
        (lambda: pdfs.text_pdf(["cut short"])[:-400], "pdf_truncated"),
        (lambda: pdfs.HEADER + b"1.7\n" + bytes(range(256)) * 8 + pdfs.END_MARKER, "pdf_damaged"),
        (pdfs.encrypted_pdf, "pdf_encrypted"),
        (pdfs.zero_page_pdf, "pdf_no_pages"),
        (lambda: pdfs.text_pdf(["page"] * (MAX_PAGES + 1)), "pdf_too_many_pages"),
    ],
)
async def test_an_unusable_pdf_is_refused_with_its_reason(workers: PdfPool, make, reason: str) -> None:
    with pytest.raises(DocumentRejected) as refused:
        await workers.read(OWNER, make(), MAX_PAGES)
    assert refused.value.reason == reason


async def test_scripts_and_forms_are_never_run_and_the_page_still_reads(workers: PdfPool) -> None:
    [page] = await workers.read(OWNER, pdfs.scripted_pdf(), MAX_PAGES)
    assert page.text == "Enter the serial number."
    assert (await workers.render_page(OWNER, pdfs.scripted_pdf(), 1, CPU_BUDGET)).size


# The document workers' limits -------------------------------------------------------------------


async def test_a_pdf_that_inflates_to_gigabytes_is_refused_by_the_memory_limit_outside_this_process(
    workers: PdfPool,
) -> None:
    """Issue 21: 0.5 MB whose content stream inflates to 512 MB took PDFium past 1 GB in the server."""
    bomb = pdfs.inflating_pdf(512)
    assert len(bomb) < MB
    with PeakMemory(os.getpid()) as memory, pytest.raises(DocumentRejected) as refused:
        await workers.read(OWNER, bomb, MAX_PAGES)
    assert (refused.value.reason, refused.value.details) == ("pdf_too_much_memory", {"limit_mb": 1024})
    assert memory.growth_mb < 50, "PDFium ran in a worker, not in this process"
    [page] = await workers.read(OWNER, pdfs.text_pdf(["Still reading."]), MAX_PAGES)  # a new worker took its place
    assert page.text == "Still reading."


async def test_a_page_or_a_document_past_its_cpu_time_is_refused_naming_the_limit() -> None:
    slow = pdfs.slow_pdf(4, 400_000)  # each page about 0.4 s to read
    strict_pages = pdf_workers(Settings(pdf_page_seconds=0.2))
    strict_documents = pdf_workers(Settings(pdf_document_seconds=0.6))
    try:
        with pytest.raises(DocumentRejected) as refused:
            await strict_pages.read(OWNER, slow, MAX_PAGES)
        assert (refused.value.reason, refused.value.details) == ("pdf_page_too_slow", {"page": 1, "limit": 0.2})
        with pytest.raises(DocumentRejected) as refused:
            await strict_pages.render_page(OWNER, slow, 2, CPU_BUDGET)
        assert refused.value.details == {"page": 2, "limit": 0.2}, "drawing a page has the same limit"
        with pytest.raises(DocumentRejected) as refused:
            await strict_documents.read(OWNER, slow, MAX_PAGES)
        assert (refused.value.reason, refused.value.details) == ("pdf_too_slow", {"limit": 0.6})
        assert len(await strict_documents.read(OWNER, pdfs.text_pdf(["a", "b"]), MAX_PAGES)) == 2, "the next is read"
    finally:
        await strict_pages.close()
        await strict_documents.close()


async def test_a_page_too_costly_to_draw_for_a_question_goes_to_the_model_as_its_text(tmp_path: Path) -> None:
    store, strict = ContentStore(tmp_path), pdf_workers(Settings(pdf_page_seconds=0.2))
    slow, text_file = pdfs.slow_pdf(1, 400_000), pdfs.text_pdf(["Readable."])
    hits = [PageHit(name, store.put(data), "pdf", 1, name, 1.0) for name, data in [("slow", slow), ("fine", text_file)]]
    try:
        costly, fine = await shown_pages(hits, OWNER, store, strict, CPU_BUDGET)
    finally:
        await strict.close()
    assert (costly.image, costly.text) == (None, "slow"), "its text layer still goes, without an image"
    assert fine.image is not None and fine.text == "fine"


async def test_one_users_documents_never_hold_every_worker(workers: PdfPool) -> None:
    """Two workers: however many slow documents one user sends at once, another user's is read meanwhile."""
    slow = pdfs.slow_pdf(4, 500_000)  # about 2 s to read
    mallory = [asyncio.create_task(workers.read("mallory", slow, MAX_PAGES)) for _ in range(3)]
    await asyncio.sleep(0.1)  # hers are first in line
    data, facts = pdfs.facts_pdf(2, seed=20)
    pages = await workers.read("ada", data, MAX_PAGES)
    image = await workers.render_page("ada", data, 1, CPU_BUDGET)
    assert facts[1].answer in pages[1].text and image.width
    assert not any(task.done() for task in mallory), "ada did not wait for mallory's documents"
    for task in mallory:  # mallory leaves: her worker is ended, and the pool serves on
        task.cancel()
    await asyncio.gather(*mallory, return_exceptions=True)
    assert len(await workers.read("mallory", data, MAX_PAGES)) == 2


async def test_a_pdf_with_millions_of_characters_is_refused_before_its_text_reaches_the_server(
    workers: PdfPool,
) -> None:
    """A document's text may average TEXT_PER_PAGE characters a page allowed: 10,000 for one page."""
    with pytest.raises(DocumentRejected) as refused:
        await workers.read(OWNER, pdfs.crowded_pdf(lines=20), max_pages=1)
    assert (refused.value.reason, refused.value.details) == ("pdf_too_much_text", {"limit": TEXT_PER_PAGE})
    assert len((await workers.read(OWNER, pdfs.crowded_pdf(lines=20), max_pages=3))[0].text) > 19_000


# Search terms -------------------------------------------------------------------------------------


def test_search_terms_match_korean_particles_and_units_written_either_way() -> None:
    assert set(query_terms("최대 전압은?")) <= set(terms("이 소자의 최대 공급 전압은 5.5 V입니다"))
    assert "전압" in terms("전압을 낮추면") and "전압" in query_terms("전압")
    assert {"5.5", "v"} <= set(terms("5.5V")) and {"5.5", "v"} <= set(terms("5.5 V"))
    assert query_terms("What is the voltage of the regulators?") == ["voltage", "regulator"]


# Storing and searching ----------------------------------------------------------------------------


@pytest.fixture
async def documents(migrated: str) -> AsyncIterator[Documents]:
    """Documents over an emptied database of each backend, with the accounts ada and bob."""
    engine = create_engine(migrated)
    async with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(table.delete())  # on SQLite, a trigger empties the page index too
    sessions = session_factory(engine)
    for name in ("ada", "bob"):
        await add_user(sessions, name, "a long enough password")
    yield Documents(sessions)
    await engine.dispose()


async def ingested(workers: PdfPool, documents: Documents, user: str, data: bytes, name: str) -> str:
    sha256 = hashlib.sha256(data).hexdigest()
    pages = None if await documents.known(sha256) else await workers.read(user, data, MAX_PAGES)
    await documents.ingest(user, sha256, name, "pdf", pages)
    return sha256


async def rows(documents: Documents, table: type) -> int:
    async with documents.sessions() as session:
        return await session.scalar(select(func.count()).select_from(table))


async def test_the_page_holding_a_fact_is_found_in_english_and_korean(workers: PdfPool, documents: Documents) -> None:
    english, english_facts = pdfs.facts_pdf(30, seed=1)
    korean, korean_facts = pdfs.facts_pdf(30, seed=2, korean=True)
    english_key = await ingested(workers, documents, "ada", english, "datasheet.pdf")
    korean_key = await ingested(workers, documents, "ada", korean, "데이터시트.pdf")
    await ingested(workers, documents, "ada", (REPO / pdfs.EXTERNAL_PDF).read_bytes(), "mime-spec.pdf")
    for key, facts in [(english_key, english_facts), (korean_key, korean_facts)]:
        for fact in facts:
            found = await documents.search("ada", fact.question, 3)
            assert (key, fact.page) in [(hit.sha256, hit.number) for hit in found], fact.question
    [best] = await documents.search("ada", "How does the magic file start? MIME-Magic", 1)
    assert (best.name, best.number) == ("mime-spec.pdf", 9)


async def test_a_library_past_the_large_scope_still_finds_each_fact(documents: Documents) -> None:
    """Over LARGE_SCOPE_PAGES the commonest terms (each English part number's "lx", on half the pages)
    are left out of the search; the fact's page must still come first."""
    made, questions = pdfs.library(24, seed=1)  # 1,200 pages
    assert sum(len(pages) for _, _, pages in made) > LARGE_SCOPE_PAGES
    for name, sha256, pages in made:
        await documents.ingest("ada", sha256, name, "pdf", pages)
    for question in random.Random(0).sample(questions, 40):
        found = [(hit.sha256, hit.number) for hit in await documents.search("ada", question.text, 3)]
        assert (question.sha256, question.page) in found, question.text
    assert await documents.search("bob", questions[0].text, 3) == []


async def test_a_document_is_stored_once_whoever_uploads_it(workers: PdfPool, documents: Documents) -> None:
    data, facts = pdfs.facts_pdf(5, seed=3)
    key = await ingested(workers, documents, "ada", data, "ada's name.pdf")
    assert await documents.known(key)
    await ingested(workers, documents, "bob", data, "bob's name.pdf")
    await ingested(workers, documents, "bob", data, "again.pdf")  # the same file twice: one library entry
    assert (await rows(documents, Document), await rows(documents, DocumentPage)) == (1, 5)
    assert await rows(documents, LibraryDocument) == 2
    [bobs] = await documents.library("bob")
    assert (bobs.name, bobs.page_count, bobs.kind) == ("bob's name.pdf", 5, "pdf")
    assert [hit.name for hit in await documents.search("bob", facts[0].question, 1)] == ["bob's name.pdf"]


async def test_nobody_else_can_search_or_read_a_users_documents(workers: PdfPool, documents: Documents) -> None:
    data, facts = pdfs.facts_pdf(5, seed=4)
    key = await ingested(workers, documents, "ada", data, "secret.pdf")
    assert await documents.search("ada", facts[0].question, 3)
    assert await documents.search("bob", facts[0].question, 3) == []
    assert await documents.search("bob", facts[0].question, 3, within=[key]) == [], "naming it does not help"
    assert await documents.page_texts("bob", key) is None and await documents.library("bob") == []
    assert len(await documents.page_texts("ada", key)) == 5


async def test_a_search_within_some_documents_finds_only_their_pages(workers: PdfPool, documents: Documents) -> None:
    first, facts = pdfs.facts_pdf(4, seed=5)
    second, _ = pdfs.facts_pdf(4, seed=6)
    first_key = await ingested(workers, documents, "ada", first, "first.pdf")
    second_key = await ingested(workers, documents, "ada", second, "second.pdf")
    found = await documents.search("ada", facts[0].question + " " + FILLER_WORDS, 8, within=[second_key])
    assert found and {hit.sha256 for hit in found} == {second_key}
    assert {hit.sha256 for hit in await documents.search("ada", FILLER_WORDS, 8)} == {first_key, second_key}
    assert await documents.search("ada", facts[0].question, 3, within=[]) == []


FILLER_WORDS = "recommended operating conditions"


async def test_a_failed_ingest_stores_nothing(documents: Documents) -> None:
    page = PageText(1, "twice the same page number", 612, 792)
    with pytest.raises(Exception, match=r"(?i)unique"):
        await documents.ingest("ada", "0" * 64, "broken.pdf", "pdf", [page, page])
    assert [await rows(documents, table) for table in (Document, DocumentPage, LibraryDocument)] == [0, 0, 0]
    assert await documents.search("ada", "twice the same page", 3) == []
    async with documents.sessions() as session:
        if session.bind.dialect.name == "sqlite":
            assert await session.scalar(text("SELECT count(*) FROM page_search WHERE page_search MATCH 'twice'")) == 0
