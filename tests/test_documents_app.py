"""PDF and text attachments in the real app, over socket.io: read into the library, the right pages shown
to the model and cited under the answer, the same pages for a regenerated answer, bad files refused
with their reason while the app keeps serving, and another user's documents out of reach."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers import pdfs
from tests.helpers.budgets import CPU_BUDGET
from tests.helpers.client import GREEDY, ChatClient, only_answer, png
from tests.helpers.databases import postgres_database
from tests.helpers.memory import PeakMemory
from tests.helpers.server import REPO, Server, add_account, export_rows, rows, start_server, stop_server, stored

PASSWORD = "documents-password-1"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def on_each_database(
    request: pytest.FixtureRequest, server: Server, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    """The shared server (SQLite), or one of its own on a new PostgreSQL database."""
    if request.param == "sqlite":
        yield server
        return
    async with postgres_database("loupe_documents") as url:
        process, postgres_server = await asyncio.to_thread(
            start_server, tmp_path_factory.mktemp("documents-postgresql"), LOUPE_DATABASE_URL=url
        )
        try:
            yield postgres_server
        finally:
            stop_server(process)


def record(answer: dict) -> dict:
    return answer["metadata"]["generation"]


def cited(answer: dict) -> list[tuple[str, int]]:
    return [(source["name"], source["page"]) for source in record(answer)["sources"]]


async def test_the_page_holding_the_answer_is_shown_to_the_model_and_cited(on_each_database: Server) -> None:
    server = on_each_database
    data, facts = pdfs.facts_pdf(12, seed=7)
    fact = facts[8]
    async with ChatClient(server.url) as client:
        await client.change_settings(GREEDY)
        datasheet = await client.upload("datasheet.pdf", data, "application/pdf")
        reply = await client.ask(fact.question, [datasheet])
        answer = only_answer(reply)
        assert answer["metadata"]["ended"] == "finished" and reply.tokens
        assert ("datasheet.pdf", fact.page) in cited(answer), "the page with the fact is among those shown"
        assert len(cited(answer)) == 3, "LOUPE_DOCUMENT_PAGES pages of a 12-page document"
        sha256 = hashlib.sha256(data).hexdigest()
        assert all(source["sha256"] == sha256 and source["kind"] == "pdf" for source in record(answer)["sources"])
        assert answer["output"].endswith(
            "**Sources:** " + " · ".join(f"datasheet.pdf, p. {page}" for _, page in cited(answer))
        )
        # Each cited page has its preview beside the answer, named as cited: an image of the page.
        previews = {element["name"]: element for element in reply.of("element") if element["forId"] == answer["id"]}
        assert set(previews) == {f"datasheet.pdf, p. {page}" for _, page in cited(answer)}
        assert {element["type"] for element in previews.values()} == {"image"}
        # The page images are in the prompt: it is far longer than the question alone.
        assert record(answer)["prompt_tokens"] > 3 * 64

        # Another answer to the same question is shown the same pages, so the two can be compared.
        again = only_answer(await client.regenerate(answer["id"]))
        assert cited(again) == cited(answer)


async def test_a_short_document_goes_whole_and_text_files_are_read_as_text(server: Server) -> None:
    data, facts = pdfs.facts_pdf(2, seed=8, korean=True)
    notes = b"Bench notes\nThe relay K3 chatters above 48 V.\n"
    async with ChatClient(server.url, language="ko-KR") as client:
        await client.change_settings(GREEDY)
        files = [await client.upload("데이터시트.png", data, "image/png"), await client.upload("notes.md", notes)]
        answer = only_answer(await client.ask(facts[0].question, files))
        assert cited(answer) == [("데이터시트.png", 1), ("데이터시트.png", 2), ("notes.md", 1)]
        assert answer["output"].endswith("**출처:** 데이터시트.png, p. 1 · 데이터시트.png, p. 2 · notes.md")
        # The next question in the chat still has the conversation's documents.
        follow_up = only_answer(await client.ask("K3 릴레이는 몇 V에서 떨리나요?"))
        assert ("notes.md", 1) in cited(follow_up)


async def test_bad_documents_are_refused_by_name_and_nothing_is_stored(on_each_database: Server) -> None:
    server = on_each_database
    bad = {
        "locked.pdf": (pdfs.encrypted_pdf(), "the PDF is protected by a password"),
        "cut.pdf": (pdfs.text_pdf(["cut short"] * 3)[:-300], "the PDF is cut short"),
        "empty-tree.pdf": (pdfs.zero_page_pdf(), "the PDF has no pages"),
        "garbled.pdf": (pdfs.HEADER + b"1.7\n" + bytes(range(256)) * 8 + pdfs.END_MARKER, "the PDF is damaged"),
        "nothing.pdf": (b"", "the file is empty"),
        "tome.pdf": (pdfs.text_pdf(["page"] * 501), "the PDF has 501 pages; the limit is 500"),
    }
    async with ChatClient(server.url) as client:
        await client.change_settings(GREEDY)
        good = await client.upload("good.pdf", pdfs.text_pdf(["The fuse is rated 2 A."]), "application/pdf")
        for name, (content, reason) in bad.items():
            file_id = await client.upload(name, content, "application/pdf")
            [refusal] = [message["output"] for message in (await client.ask("Summarize.", [good, file_id])).messages]
            assert f"**{name}**: {reason}" in refusal, refusal
            good = await client.upload("good.pdf", pdfs.text_pdf(["The fuse is rated 2 A."]), "application/pdf")
        scripted = await client.upload("form.pdf", pdfs.scripted_pdf(), "application/pdf")
        answer = only_answer(await client.ask("What does the form ask for?", [scripted]))
        assert cited(answer) == [("form.pdf", 1)], "a PDF with scripts and forms is read, never run"
        huge = await client.upload("sheet.pdf", pdfs.sized_pdf(14400, 14400), "application/pdf")  # 200 x 200 in
        reply = await client.ask("What is on the drawing sheet?", [huge])
        assert ("sheet.pdf", 1) in cited(only_answer(reply)), "a page of any size is shown within the budget"
        # Nothing of a refused message was kept: its good file is neither in the conversation nor the library.
        assert "good.pdf" not in {name for name, _ in cited(answer)}
        [listing] = (await client.ask("", command="Library")).messages
        assert "form.pdf" in listing["output"] and "good.pdf" not in listing["output"]


@pytest.fixture(scope="module")
def attacker(server: Server) -> str:
    """The account that sends the hostile files; admin is the other user, who must not notice."""
    add_account(server, "pdf-attacker", PASSWORD)
    return "pdf-attacker"


async def test_a_pdf_that_inflates_to_gigabytes_is_refused_and_the_server_memory_stays(
    server: Server, attacker: str
) -> None:
    """Issue 21: a 0.5 MB PDF whose content stream inflates to 512 MB took the server from 1.4 to 2.5 GB."""
    data, facts = pdfs.facts_pdf(1, seed=15)
    async with ChatClient(server.url, username=attacker, password=PASSWORD) as mallory, ChatClient(server.url) as ada:
        await ada.change_settings(GREEDY)
        mine = only_answer(await ada.ask(facts[0].question, [await ada.upload("mine.pdf", data, "application/pdf")]))
        library = rows(server, LIBRARY_OF, "admin")
        bomb = await mallory.upload("report.pdf", pdfs.inflating_pdf(512), "application/pdf")
        with PeakMemory(server.pid) as memory:
            refused, answered = await asyncio.gather(mallory.ask("Summarize.", [bomb]), ada.ask(facts[0].question))
        [refusal] = [message["output"] for message in refused.messages]
        assert (
            "**report.pdf**: reading the PDF needs more than 1024 MB of memory, the limit for one document" in refusal
        )
        assert memory.growth_mb < 50, "PDFium inflated it in a worker, not in the server"
        assert cited(only_answer(answered)) == cited(mine) == [("mine.pdf", 1)], "the other user is still answered"
        assert rows(server, LIBRARY_OF, "admin") == library
        assert rows(server, LIBRARY_OF, attacker) == [], "nothing of the refused file is kept"


async def test_a_slow_pdf_costs_its_sender_time_and_nobody_else(server: Server, attacker: str) -> None:
    """Issue 21: pages that each take long to read held the server's one PDFium lock, 10 at a time, and
    another user's one-page question waited behind them. Now each user's reading has a worker of its own."""
    data, facts = pdfs.facts_pdf(1, seed=16)
    async with ChatClient(server.url, username=attacker, password=PASSWORD) as mallory, ChatClient(server.url) as ada:
        await ada.change_settings(GREEDY)
        slow = await mallory.upload("slow.pdf", pdfs.slow_pdf(20, 300_000), "application/pdf")  # about 0.3 s a page
        await mallory.send("Summarize.", [slow])
        await mallory.wait_for_message("Reading **slow.pdf**: page 1 of 20")
        answer = only_answer(await ada.ask(facts[0].question, [await ada.upload("one.pdf", data, "application/pdf")]))
        assert cited(answer) == [("one.pdf", 1)]
        progress = [message["output"] for message in mallory.seen_messages if "slow.pdf" in message["output"]]
        assert progress == ["Reading **slow.pdf**: page 1 of 20…"], "ada's question did not wait for slow.pdf's pages"
        await mallory.stop()  # her reading ends with its job, and its worker
        await mallory.wait_for("task_end")
    assert rows(server, LIBRARY_OF, attacker) == []


LIBRARY_OF = (
    "SELECT l.name, l.sha256, l.created_at FROM library l JOIN users u ON u.id = l.user_id WHERE u.identifier = ?"
)


async def test_another_user_can_neither_search_nor_see_a_users_pages(server: Server) -> None:
    add_account(server, "pages-owner", PASSWORD)
    add_account(server, "pages-other", PASSWORD)
    data, facts = pdfs.facts_pdf(5, seed=9)
    async with ChatClient(server.url, username="pages-owner", password=PASSWORD) as owner:
        await owner.change_settings(GREEDY)
        reply = await owner.ask(facts[1].question, [await owner.upload("private.pdf", data, "application/pdf")])
        assert cited(only_answer(reply))
        [[page_image]] = await stored(
            server, "SELECT object_key FROM elements WHERE name = ?", f"private.pdf, p. {facts[1].page}", count=1
        )
        document = f"/loupe/files/{hashlib.sha256(data).hexdigest()}"
        async with httpx.AsyncClient(base_url=server.url, cookies=owner.cookies) as http:
            assert (await http.get(f"/loupe/files/{page_image}")).status_code == 200
            download = await http.get(document)
            assert download.headers["content-type"] == "application/pdf" and download.content == data
            assert download.headers["content-disposition"] == "attachment", "downloaded, never rendered by Loupe"

    async with ChatClient(server.url, username="pages-other", password=PASSWORD) as other:
        await other.change_settings(GREEDY)
        theirs = only_answer(await other.ask(facts[1].question))
        assert cited(theirs) == [], "no pages of anyone else's documents"
        async with httpx.AsyncClient(base_url=server.url, cookies=other.cookies) as http:
            assert (await http.get(f"/loupe/files/{page_image}")).status_code == 404, "nor their page images"
            assert (await http.get(document)).status_code == 404, "nor the document"


async def test_a_new_chat_asks_across_the_whole_library_and_lists_it(server: Server) -> None:
    add_account(server, "librarian", PASSWORD)
    add_account(server, "outsider", PASSWORD)
    first, first_facts = pdfs.facts_pdf(6, seed=10)
    second, _ = pdfs.facts_pdf(6, seed=11)
    async with ChatClient(server.url, username="librarian", password=PASSWORD) as client:
        assert "set_commands" in client.seen, "the composer offers the Library command"
        [empty] = (await client.ask("", command="Library")).messages
        assert empty["output"].startswith("Your library is empty")
        files = [
            await client.upload(name, data, "application/pdf") for name, data in [("a.pdf", first), ("b.pdf", second)]
        ]
        [read] = (await client.ask("", files)).messages
        assert read["output"] == "Read a.pdf, b.pdf: ask about them in your next message."

    async with ChatClient(server.url, username="librarian", password=PASSWORD) as fresh:
        await fresh.change_settings(GREEDY)
        fact = first_facts[3]
        assert cited(only_answer(await fresh.ask(fact.question))) == [], "a new chat has no documents of its own"
        across = only_answer(await fresh.ask(fact.question, command="Library"))
        assert ("a.pdf", fact.page) in cited(across), "the Library command searches every document"
        [listing] = (await fresh.ask("", command="Library")).messages
        assert listing["output"].startswith("**Your documents** (2):")
        a, b = hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest()
        assert f"- [a.pdf](/loupe/files/{a}): 6 pages, added " in listing["output"]
        assert f"- [b.pdf](/loupe/files/{b}): 6 pages" in listing["output"]
        async with httpx.AsyncClient(base_url=server.url, cookies=fresh.cookies) as http:
            assert (await http.get(f"/loupe/files/{a}")).content == first, "a name downloads its document"
        [remove_a] = [
            button for button in fresh.actions_for(listing["id"], "remove_document") if button["payload"]["sha256"] == a
        ]
        assert remove_a["label"] == "Remove a.pdf"
        (await fresh.click(remove_a)).raise_for_status()
        [listing] = (await fresh.ask("", command="Library")).messages
        assert listing["output"].startswith("**Your documents** (1):") and "a.pdf" not in listing["output"]
        after = cited(only_answer(await fresh.ask(fact.question, command="Library")))
        assert all(name != "a.pdf" for name, _ in after), "nor found any more"

    async with ChatClient(server.url, username="outsider", password=PASSWORD) as other:
        theirs = only_answer(await other.ask(first_facts[3].question, command="Library"))
        assert cited(theirs) == [], "only one's own library"
        async with httpx.AsyncClient(base_url=server.url, cookies=other.cookies) as http:
            assert (await http.get(f"/loupe/files/{b}")).status_code == 404, "nor another's document"


async def test_a_resumed_chat_keeps_its_documents_and_the_export_keeps_what_the_model_saw(
    server: Server, tmp_path: Path
) -> None:
    add_account(server, "exporter", PASSWORD)
    data, facts = pdfs.facts_pdf(8, seed=12)
    async with ChatClient(server.url, username="exporter", password=PASSWORD) as client:
        await client.change_settings({**GREEDY, "temperature": 1.0})
        spec = await client.upload("spec.pdf", data, "application/pdf")
        first = only_answer(await client.ask(facts[5].question, [spec]))
        second = only_answer(await client.regenerate(first["id"]))
        prefer = next(a for a in client.actions_for(second["id"], "compare") if a["payload"]["choice"] == "b")
        (await client.click(prefer)).raise_for_status()
        thread_id = client.thread_id

    async with ChatClient(server.url, username="exporter", password=PASSWORD, thread_id=thread_id) as resumed:
        await resumed.change_settings(GREEDY)
        later = only_answer(await resumed.ask(facts[2].question))
        assert ("spec.pdf", facts[2].page) in cited(later), "the resumed chat still reads its document"
        async with httpx.AsyncClient(base_url=server.url, cookies=resumed.cookies) as http:
            thread = (await http.get(f"/project/thread/{thread_id}")).json()
        [attached] = [element for element in thread["elements"] if element["name"] == "spec.pdf"]
        assert attached["type"] == "file", "the attached PDF comes back as a file to download"

    await stored(server, "SELECT 1 FROM comparisons WHERE answer_b = ?", second["id"], count=1)
    [row] = [row for row in export_rows(server, tmp_path / "export") if "spec.pdf" in json.dumps(row["prompt"])]
    question = row["prompt"][-1]["content"]
    page_images = [block for block in question if block["type"] == "image"]
    assert len(page_images) == len(row["images"]) == len(cited(first)), "one image per page shown"
    asked = question[-1]["text"]
    assert asked.endswith(facts[5].question) and all(f"[spec.pdf, p. {page}]" in asked for _, page in cited(first))
    assert facts[5].answer in asked, "the page's text layer is in the prompt"
    for image in row["images"]:
        with Image.open(tmp_path / "export" / image) as page:
            assert page.width * page.height <= CPU_BUDGET.max_pixels, "the page as the model saw it, within the budget"

    # TRL trains on it: `python -m models train`, one DPO step on the demo model.
    command = [sys.executable, "-m", "models", "train", "--method", "dpo", "--data", str(tmp_path / "export")]
    command += ["--out", str(tmp_path / "adapter"), "--base", "demo", "--max-steps", "1", "--eval-fraction", "0"]
    command += ["--per-device-train-batch-size", "1", "--gradient-accumulation-steps", "1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


async def test_a_long_document_shows_its_progress_and_is_read_only_once(server: Server) -> None:
    data, facts = pdfs.facts_pdf(25, seed=13)
    async with ChatClient(server.url) as client:
        await client.change_settings(GREEDY)
        reply = await client.ask(facts[20].question, [await client.upload("long.pdf", data, "application/pdf")])
        progress = [m["output"] for m in client.seen_messages if m["output"].startswith(("Reading", "Read **"))]
        assert progress[0] == "Reading **long.pdf**: page 1 of 25…"
        assert "Reading **long.pdf**: page 21 of 25…" in progress
        assert progress[-1] == "Read **long.pdf**: 25 pages, now in your library."
        assert ("long.pdf", facts[20].page) in cited(reply.messages[-1])

    add_account(server, "second-reader", PASSWORD)  # another user's upload of the same bytes
    async with ChatClient(server.url, username="second-reader", password=PASSWORD) as again:
        await again.change_settings(GREEDY)
        reply = await again.ask(facts[4].question, [await again.upload("same.pdf", data, "application/pdf")])
        assert not [m for m in again.seen_messages if m["output"].startswith("Reading")], "not read again"
        assert ("same.pdf", facts[4].page) in cited(only_answer(reply)), "under the name this user gave it"


async def test_cited_pages_do_not_count_as_uploads_waiting_to_be_sent(server: Server) -> None:
    """The previews are the server's files: a user who asked about documents can still upload a full quota."""
    add_account(server, "quota-reader", PASSWORD)
    data, facts = pdfs.facts_pdf(6, seed=14)
    async with ChatClient(server.url, username="quota-reader", password=PASSWORD) as client:
        await client.change_settings(GREEDY)
        for fact in facts[:3]:
            reply = await client.ask(fact.question, [await client.upload("q.pdf", data, "application/pdf")])
            assert len(cited(only_answer(reply))) == 3
        quota = 5 * 4  # chat/ui/runtime.py: five messages of LOUPE_MAX_IMAGES_PER_MESSAGE files
        assert len([await client.upload(f"{n}.png", png(), "image/png") for n in range(quota)]) == quota
