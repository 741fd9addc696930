"""Documents in the chat: attached PDFs and text files read into the user's library (chat/documents/library.py),
with a long PDF's progress line in the chat, the pages each question is answered from, and the citations under
the answer (chat/documents/ holds the rules).
The conversation's documents are kept in the session; ownership is the library's, checked by
every query (chat/store/documents.py), so a document id from anywhere else finds nothing.
"""

from __future__ import annotations

import io

import chainlit as cl
from langchain_core.messages import BaseMessage, HumanMessage
from PIL import Image

from chat.documents.library import read_into_library
from chat.documents.reading import DocumentFile
from chat.documents.retrieval import ShownPage
from chat.ui.chainlit_fixes import without_thumbs
from chat.ui.routes import file_url, stored_file_url
from chat.ui.runtime import serving
from chat.ui.texts import text
from chat.ui.uploads import UploadsRejected

PROGRESS_FROM_PAGES = 20  # a shorter document is read before a progress line could be read
SESSION_KEY = "documents"  # the sha256 of each document of this conversation, in the order attached
REMOVE_DOCUMENT = "remove_document"  # the Library list's button that takes a document out of the library


async def add_to_library(files: list[DocumentFile], user: str, language: str) -> None:
    """Read each new document into the user's library (chat/documents/library.py), showing a long PDF's progress,
    and add every one to this conversation. Raises UploadsRejected, naming each file that cannot be read; then
    none of them is stored."""
    runtime = serving()
    shown: dict[str, tuple[cl.Message, int]] = {}  # a long PDF's progress line and its pages

    async def progress(file: DocumentFile, first: int, total: int) -> None:
        if total < PROGRESS_FROM_PAGES:
            return
        content = text("reading_document", language, name=file.name, done=first, total=total)
        if file.sha256 not in shown:
            shown[file.sha256] = (cl.Message(content=content), total)  # in the answer's run: before the answer
            await shown[file.sha256][0].send()
        else:
            shown[file.sha256][0].content = content
            await shown[file.sha256][0].update()

    library = runtime.documents, runtime.store, runtime.pdfs, runtime.settings.max_pdf_pages
    if problems := await read_into_library(files, user, *library, progress):
        raise UploadsRejected.naming(problems, language)
    for file in files:
        if file.sha256 in shown:
            message, total = shown[file.sha256]
            message.content = text("read_document", language, name=file.name, total=total)
            await message.update()
    attached = conversation_documents()
    attached += [file.sha256 for file in files if file.sha256 not in attached]
    cl.user_session.set(SESSION_KEY, list(dict.fromkeys(attached)))


def conversation_documents() -> list[str]:
    return list(cl.user_session.get(SESSION_KEY) or [])


def restore_documents(thread: dict) -> None:
    """On resume: the thread's attachments are its documents."""
    cl.user_session.set(SESSION_KEY, thread_documents(thread))


def thread_documents(thread: dict) -> list[str]:
    """A stored thread's attachments, by sha256, in the order attached (those in the user's library count)."""
    return list(
        dict.fromkeys(element["objectKey"] for element in thread.get("elements") or [] if element.get("objectKey"))
    )


async def show_library(user: str, language: str) -> None:
    """The user's documents, newest first (the Library command sent without a question): each name downloads the
    file, and a button under the list takes one out of the library."""
    entries = await serving().documents.library(user)
    if not entries:
        await without_thumbs(cl.Message(content=text("library_empty", language))).send()
        return
    lines = [
        text(
            "library_entry",
            language,
            name=f"[{markdown_link_text(entry.name)}]({file_url(entry.sha256)})",
            pages=entry.page_count,
            added=entry.added.date().isoformat(),
        )
        for entry in entries
    ]
    removals = [
        cl.Action(
            name=REMOVE_DOCUMENT,
            payload={"sha256": entry.sha256},
            label=text("library_remove", language, name=entry.name),
            icon="trash-2",
        )
        for entry in entries
    ]
    listing = text("library_list", language, count=len(entries), entries="\n".join(lines))
    await without_thumbs(cl.Message(content=listing, actions=removals)).send()


async def remove_from_library(action: cl.Action, user: str, language: str) -> None:
    """Take the document of a Library list's button out of the user's library, and say so."""
    name = await serving().documents.remove(user, action.payload["sha256"])
    await action.remove()
    said = text("library_removed", language, name=name) if name else text("library_not_there", language)
    await without_thumbs(cl.Message(content=said)).send()


def markdown_link_text(name: str) -> str:
    """A file name as a Markdown link's text: brackets and backslashes escaped, so a name cannot end the link."""
    return name.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


async def pages_for_turn(
    earlier: list[BaseMessage], turn: HumanMessage, user: str, whole_library: bool = False
) -> list[ShownPage]:
    """The pages for this question and the one before it: from the conversation's documents, or from all of the
    user's documents (the Library command)."""
    within = None if whole_library else conversation_documents()
    return await serving().answering.pages(user, earlier, turn, within)


def page_elements(pages: list[ShownPage]) -> list[cl.Image | cl.Text]:
    """A preview of each cited page beside the answer, named as the answer cites it (Chainlit links the name).

    The data layer stores each preview's content in the content store, and the page loads it from
    Loupe's own route by that key (`stored_file_url`).
    """
    elements: list[cl.Image | cl.Text] = []
    for page in pages:
        if page.image is not None:
            content = _png(page.image)
            url = stored_file_url(content)
            elements.append(cl.Image(name=page.source.label, content=content, url=url, display="side"))
        else:
            url = stored_file_url(page.text)
            elements.append(cl.Text(name=page.source.label, content=page.text, url=url, display="side"))
    return elements


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()
