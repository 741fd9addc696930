"""The running app in a real browser: ask about an image, watch the answer stream, stop one;
rate an answer, come back to the chat from the history, and find it as it was.

Drives Debian's Chromium (`apt-get install chromium`) through Playwright's Python package, whose
wheel carries its own driver. Never run `playwright install`: it downloads a browser of its own.
Without Chromium these tests skip, except in CI (CI set), where they fail.

`python -m tests.test_browser` remakes public/screenshot.png, the picture in the README.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont
from playwright.async_api import Browser, Locator, Page, Playwright, ViewportSize, async_playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from chat.ui.texts import reason_label, text
from tests.helpers.client import GREEDY, ChatClient
from tests.helpers.dashboard import battle, rated_answer, table
from tests.helpers.datasets import save_adapter
from tests.helpers.pdfs import facts_pdf
from tests.helpers.server import (
    ADMIN_PASSWORD,
    REPO,
    Server,
    add_account,
    generations,
    start_server,
    stop_server,
    stored,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}

ANSWERS = "[data-step-type='assistant_message']"
QUEUED = "⏳"  # chat/ui/texts.py "queued": the notice to a chat waiting for the model
STOPPED = "■ Stopped."  # chat/ui/texts.py "stopped" ("■ *Stopped.*") as the page renders it

# The demo model writes 128 tokens unless told otherwise; 1024 take ~30 s on a CPU.
START = 60_000  # ms: page load, first token, upload
FINISH = 180_000  # ms: a whole 1024-token answer, with headroom for a busy machine

pytestmark = pytest.mark.browser


def find_chromium() -> Path | None:
    """Debian's Chromium, where .ci/run installs it, or any `chromium` on PATH."""
    if CHROMIUM.is_file():
        return CHROMIUM
    found = shutil.which("chromium")
    return Path(found) if found else None


async def launch(playwright: Playwright, chromium: Path) -> Browser:
    """Headless, with Chromium's background traffic off: the test machine may have no network."""
    return await playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One Chromium for the session; missing, it skips the browser tests, or fails them in CI."""
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI: apt-get install chromium (.ci/run does)", pytrace=False)
        pytest.skip("Chromium not installed: apt-get install chromium")
    async with async_playwright() as playwright:
        launched = await launch(playwright, chromium)
        yield launched
        await launched.close()


@pytest.fixture
def newcomer(server: Server) -> tuple[str, str]:
    """A user of one test alone (name, password), for open_chat on the session's shared server.

    Other test files use that server too, and a user's next chat starts with the chat settings they last chose
    (chat/store/last_chat.py): the admin's would be whatever those files left, a system prompt included."""
    name = f"page-{uuid.uuid4().hex[:8]}"
    add_account(server, name, f"{name}-password")
    return name, f"{name}-password"


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh English-speaking browser context per test, so each test gets its own chat session."""
    context = await browser.new_context(viewport=VIEWPORT, locale="en-US")
    opened = await context.new_page()
    yield opened
    await context.close()


def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where installed (Debian's Chromium pulls it in): Pillow's own font has no Ω."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def draw_circuit(path: Path) -> Path:
    """A small schematic (battery, switch, two resistors, an LED): the kind of figure users ask about."""
    image = Image.new("RGB", (480, 320), "white")
    draw = ImageDraw.Draw(image)
    font = label_font(18)
    ink, wire = (20, 30, 60), 3

    def resistor(x: int, y: int, label: str) -> None:
        """A horizontal zigzag resistor from x to x+80 on the wire at height y."""
        points = [(x, y), (x + 10, y)]
        points += [(x + 15 + 10 * step, y + (-12 if step % 2 == 0 else 12)) for step in range(6)]
        points += [(x + 70, y), (x + 80, y)]
        draw.line(points, fill=ink, width=wire, joint="curve")
        draw.text((x + 40, y - 36), label, fill=ink, font=font, anchor="mm")

    # Loop: battery on the left, R1 and R2 along the top, the LED down the right, the switch at the bottom.
    draw.line([(60, 150), (60, 60), (140, 60)], fill=ink, width=wire)
    resistor(140, 60, "R1 330 Ω")
    draw.line([(220, 60), (280, 60)], fill=ink, width=wire)
    resistor(280, 60, "R2 1 kΩ")
    draw.line([(360, 60), (420, 60), (420, 130)], fill=ink, width=wire)
    draw.polygon([(400, 130), (440, 130), (420, 165)], outline=ink, fill=(250, 204, 21), width=wire)  # LED
    draw.line([(398, 167), (442, 167)], fill=ink, width=wire)
    draw.line([(432, 140), (452, 120)], fill=ink, width=2)
    draw.line([(440, 150), (460, 130)], fill=ink, width=2)
    draw.text((450, 182), "D1", fill=ink, font=font, anchor="lm")
    draw.line([(420, 167), (420, 260), (280, 260)], fill=ink, width=wire)
    draw.line([(280, 260), (230, 240)], fill=ink, width=wire)  # open switch S1
    draw.ellipse([(276, 256), (284, 264)], outline=ink, width=2)
    draw.ellipse([(216, 256), (224, 264)], outline=ink, width=2)
    draw.text((250, 290), "S1", fill=ink, font=font, anchor="mm")
    draw.line([(216, 260), (60, 260), (60, 190)], fill=ink, width=wire)
    draw.line([(35, 150), (85, 150)], fill=ink, width=wire)  # battery: long plate +, short plate -
    draw.line([(47, 170), (73, 170)], fill=ink, width=wire + 3)
    draw.line([(60, 170), (60, 190)], fill=ink, width=wire)
    draw.text((95, 160), "9 V", fill=ink, font=font, anchor="lm")
    image.save(path, "PNG")
    return path


async def open_chat(page: Page, url: str, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
    """Log in (as admin) and wait for the demo notice: on_chat_start has run, so a message will be heard."""
    await page.goto(url)
    await page.locator("#email").fill(username)
    await page.locator("#password").fill(password)
    await page.locator("#password").press("Enter")
    await expect(page.locator(ANSWERS).filter(has_text="Demo model.")).to_have_count(1, timeout=START)


async def attach(page: Page, image: Path) -> None:
    """Upload through the paperclip's hidden file input, and wait until the upload has finished.

    The preview shows at once from a local blob; the send button stays disabled until the server
    has the file, so only then does the message carry it.
    """
    await page.locator("#upload-button-input").set_input_files(image)
    await expect(page.locator(f"#attachments img[alt='{image.name}']")).to_be_visible(timeout=START)
    await expect(page.locator("#chat-submit")).to_be_enabled(timeout=START)


async def new_answer(page: Page, before: int) -> Locator:
    """The assistant message that the last question started, once its first tokens are on the page.

    Found among the messages after the first `before` ones, skipping the queue notice ("⏳ ...")
    shown while another chat holds the model, so it may take as long as someone else's answer.
    Pinned by its step id: notices may follow it.
    """
    found = await page.wait_for_function(
        """([selector, before, queued]) => {
            const answers = [...document.querySelectorAll(selector)].slice(before);
            const answer = answers.find((a) => a.innerText.trim() && !a.innerText.trim().startsWith(queued));
            return answer ? answer.querySelector("[id^='step-']").id : null;
        }""",
        arg=[ANSWERS, before, QUEUED],
        timeout=FINISH,
    )
    return page.locator(f"[id='{await found.json_value()}']")


async def text_of(answer: Locator) -> str:
    """An answer's text as shown, without the buttons under it (Regenerate, reasons...)."""
    return await answer.locator(".message-content").inner_text()


async def wait_until_longer(page: Page, answer: Locator, length: int) -> None:
    """Wait until the answer's text exceeds `length` while the run is still going: it streams."""
    step_id = await answer.get_attribute("id")
    await page.wait_for_function(
        """([id, length]) => {
            const answer = document.getElementById(id);
            return answer !== null && answer.innerText.length > length
                && document.getElementById("stop-button") !== null;
        }""",
        arg=[step_id, length],
        timeout=START,
    )


async def click_until_sent(page: Page, button: Locator, tries: int = 3) -> None:
    """Click a custom element's button until the click reaches the server (its POST /project/action), which
    must take it.

    Chainlit's CustomElement rebuilds the element's DOM whenever it renders again (react-runner evaluates the
    JSX anew for each new scope object), also for page-side changes after a run ends; a rebuild between the
    press and the release swallows the click, and nothing is sent. A click that sent nothing did nothing, so
    clicking again cannot act twice."""
    for attempt in range(1, tries + 1):
        try:
            async with page.expect_request(lambda r: r.url.endswith("/project/action"), timeout=5_000) as sent:
                await button.click()
        except PlaywrightTimeoutError:
            assert attempt < tries, f"the button sent no click in {tries} tries"
            continue
        answered = await (await sent.value).response()
        assert answered is not None and answered.ok, f"the click was refused: {answered and await answered.text()}"
        return


async def record_lengths_while_running(page: Page) -> None:
    """From now on the page notes each length every answer's text takes while a run is going (stop button
    shown), as it changes. A test reads the record after the run (`lengths_while_running`) instead of racing
    to see a short answer mid-stream: on a busy machine a 64-token answer can end before the test looks."""
    await page.evaluate(
        """(selector) => {
            window.loupeLengths = {};
            new MutationObserver(() => {
                if (document.getElementById("stop-button") === null) return;
                for (const answer of document.querySelectorAll(selector)) {
                    const step = answer.querySelector("[id^='step-']");
                    const length = step === null ? 0 : step.innerText.length;
                    if (!length) continue;
                    const lengths = (window.loupeLengths[step.id] ??= []);
                    if (lengths.at(-1) !== length) lengths.push(length);
                }
            }).observe(document.body, { childList: true, subtree: true, characterData: true });
        }""",
        ANSWERS,
    )


async def lengths_while_running(page: Page, answer: Locator) -> list[int]:
    return await page.evaluate("(id) => window.loupeLengths[id] ?? []", await answer.get_attribute("id"))


async def ask(page: Page, question: str, image: Path | None = None) -> Locator:
    """Type a question, optionally attach an image, send it, and return the answer's message."""
    before = await page.locator(ANSWERS).count()
    await page.locator("#chat-input").fill(question)
    if image is not None:
        await attach(page, image)
    await page.locator("#chat-input").press("Enter")
    return await new_answer(page, before)


async def wait_until_finished(page: Page) -> None:
    """The stop button is there exactly while a run is going."""
    await expect(page.locator("#stop-button")).to_be_hidden(timeout=FINISH)


async def rate_down(page: Page, answer: Locator, comment: str) -> None:
    """Thumbs down with a comment, and wait until the server has stored it (PUT /feedback, 200).

    The button turns "on" before the request ends, so only the response says the rating is saved.
    """
    await answer.locator(".negative-feedback-off").click()
    dialog = page.get_by_role("dialog")
    await dialog.locator("textarea").fill(comment)
    async with page.expect_response(
        lambda response: response.url.endswith("/feedback") and response.request.method == "PUT", timeout=START
    ) as saved:
        await dialog.locator("#submit-feedback").click()
    assert (await saved.value).status == 200, await (await saved.value).text()
    await expect(dialog).to_be_hidden()


async def thread_id_of(page: Page) -> str:
    """The chat's thread id, from the /thread/<id> address Chainlit moves to once the thread is stored."""
    await page.wait_for_url(re.compile(r"/thread/[0-9a-f-]{36}$"), timeout=START)
    return page.url.rsplit("/", 1)[1]


async def open_from_history(page: Page, name: str) -> None:
    """Open a chat by its name in the history sidebar, opening the sidebar first if it is collapsed
    (`default_sidebar_state = "closed"` in .chainlit/config.toml, or a user who closed it).

    A collapsed sidebar stays in the page, off screen; its opener is the header's copy of the trigger.
    """
    sidebar = page.locator("[data-side='left'][data-state]")
    if await sidebar.get_attribute("data-state", timeout=START) == "collapsed":
        await page.locator("#header #sidebar-trigger-button").click()
    await expect(sidebar).to_have_attribute("data-state", "expanded")
    await page.locator("#thread-history").get_by_text(name, exact=True).click(timeout=START)


async def expect_loaded(image: Locator) -> int:
    """Wait until the browser has decoded the image, and return its natural width.

    /loupe/files answers only with the login cookie, so a visible <img> may still be a broken one;
    the image is lazy-loaded, so it is scrolled into view first.
    """
    await image.scroll_into_view_if_needed(timeout=START)
    handle = await image.element_handle(timeout=START)
    await image.page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=handle, timeout=START)
    return await image.evaluate("(img) => img.naturalWidth")


async def comment_of(answer: Locator) -> str:
    """The feedback comment, read from the dialog its speech-bubble button reopens (then closed).

    The bubble is shown only when the rating has a comment; its tooltip says "edit", not the text.
    """
    await answer.locator("button:has(svg.lucide-message-circle)").click()
    dialog = answer.page.get_by_role("dialog")
    comment = await dialog.locator("textarea").input_value()
    await answer.page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    return comment


async def expect_header_clear_of_the_banner(page: Page) -> None:
    """The demo banner covers nothing: the header starts below it, and the page is no taller than the window,
    so nothing scrolled into view (a dialog's focus, an answer) can slide it up under the banner."""
    banner, header = [await page.locator(selector).bounding_box() for selector in ("#loupe-demo-banner", "#header")]
    assert banner and header and header["y"] >= banner["y"] + banner["height"] - 0.5, f"{header} under {banner}"
    height, window = await page.evaluate(
        "() => [document.scrollingElement.scrollHeight, document.scrollingElement.clientHeight]"
    )
    assert height <= window, f"the page is {height - window} px taller than the window: it slides under the banner"


async def test_answer_streams_about_an_image_and_stops_on_request(
    page: Page, server: Server, newcomer: tuple[str, str], artifacts: Path, tmp_path: Path
) -> None:
    """One chat, two questions: the first, with an image, streams to its end; the second is stopped.

    All of it under Loupe's Content-Security-Policy (chat/ui/web.py), which must block nothing the page needs.
    """
    violations = await watch_csp_violations(page)
    policy = (await page.request.get(server.url)).headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in policy
    await open_chat(page, server.url, *newcomer)
    await expect(page.locator("#loupe-demo-banner")).to_be_visible(timeout=START)
    await set_max_new_tokens(page, 1024)  # long enough to watch it stream, and to stop the second mid-answer

    circuit = draw_circuit(tmp_path / "circuit.png")
    answer = await ask(page, "What does this circuit do when S1 is closed?", circuit)
    sent_image = page.locator(f"[data-step-type='user_message'] img[alt='{circuit.name}']")
    await expect(sent_image).to_be_visible(timeout=START)
    await expect(page.locator("#stop-button")).to_be_visible()
    await wait_until_longer(page, answer, len(await text_of(answer)))
    await wait_until_finished(page)
    finished = await text_of(answer)
    assert STOPPED not in finished
    await sent_image.scroll_into_view_if_needed()
    await page.screenshot(path=artifacts / "browser-streamed-answer.png")

    # 1024 tokens take ~30 s, so Stop right after the first tokens lands mid-answer.
    answer = await ask(page, "Which resistor limits the LED current more?")
    partial = (await text_of(answer)).strip()
    await page.locator("#stop-button").click()
    await expect(page.locator("#stop-button")).to_be_hidden(timeout=3_000)
    await expect(answer).to_contain_text(STOPPED, timeout=10_000)
    stopped = await text_of(answer)
    assert partial in stopped, "the words streamed before Stop are gone"
    await asyncio.sleep(1)  # the only fixed wait: nothing may arrive after Stop
    assert await text_of(answer) == stopped, "the answer kept growing after Stop"
    assert stopped.rstrip().endswith(STOPPED)
    await page.screenshot(path=artifacts / "browser-stopped-answer.png")
    assert violations == [], violations


async def watch_csp_violations(page: Page) -> list[str]:
    """Every Content-Security-Policy violation the page reports from now on, as the console shows them."""
    violations: list[str] = []
    page.on(
        "console",
        lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None,
    )
    await page.add_init_script(
        "document.addEventListener('securitypolicyviolation', (event) => console.error("
        "`Content Security Policy violation: ${event.violatedDirective} ${event.blockedURI}`))"
    )
    return violations


async def test_rated_answer_and_image_come_back_from_the_history(
    page: Page, server: Server, newcomer: tuple[str, str], artifacts: Path, tmp_path: Path
) -> None:
    """Ask about an image and thumbs-down the answer with a comment; load the app afresh, open the chat
    from the history: the image (from durable storage), the answer and the rating are as they were,
    and the chat goes on with its history, image included, restored on the server."""
    await open_chat(page, server.url, *newcomer)
    await set_max_new_tokens(page, 32)  # this test is about what is kept, not about streaming: short answers
    circuit = draw_circuit(tmp_path / "circuit.png")
    question = "Which resistor limits the LED current?"
    answer = await ask(page, question, circuit)
    await wait_until_finished(page)
    answer_id, answered = await answer.get_attribute("id"), await text_of(answer)
    comment = "Noise: it names no resistor at all."
    await rate_down(page, answer, comment)
    thread_id = await thread_id_of(page)

    # A fresh page load of the start page: nothing survives in the browser but the login cookie.
    # (page.reload() would reload /thread/<id> and resume it without the sidebar.)
    await page.goto(server.url)
    await expect(page.locator(ANSWERS).filter(has_text="Demo model.")).to_have_count(1, timeout=START)
    await open_from_history(page, question)
    assert await thread_id_of(page) == thread_id

    resumed = page.locator(f"[id='{answer_id}']")
    await expect(resumed).to_be_visible(timeout=START)
    assert await text_of(resumed) == answered
    await expect(resumed.locator(".negative-feedback-on")).to_be_visible()
    await expect(resumed.locator(".positive-feedback-off")).to_be_visible()

    asked = page.locator("[data-step-type='user_message']").filter(has_text=question)
    sent_image = asked.locator(f"img[alt='{circuit.name}']")
    sha256 = hashlib.sha256(circuit.read_bytes()).hexdigest()
    await expect(sent_image).to_have_attribute("src", re.compile(rf"/loupe/files/{sha256}$"))
    assert await expect_loaded(sent_image) == 480  # draw_circuit's width: the very file, not a broken icon
    await page.mouse.move(0, VIEWPORT["height"])  # no hover tooltips in the picture
    await page.screenshot(path=artifacts / "browser-resumed-thread.png")
    assert await comment_of(resumed) == comment

    follow_up = await ask(page, "And what does R2 do?")
    await wait_until_finished(page)
    assert (await text_of(follow_up)).strip()
    first, second = await generations(server, thread_id, expected=2)
    # The follow-up's prompt repeats the first turn, its image's visual tokens included: with the
    # history lost, or restored without the image, it would be shorter than the first prompt.
    assert second["prompt_tokens"] > first["prompt_tokens"]
    assert second["settings"]["max_new_tokens"] == 32  # the thread's settings were restored too


async def test_regenerate_compare_reason_and_correction_from_the_page(
    page: Page, server: Server, newcomer: tuple[str, str], artifacts: Path, tmp_path: Path
) -> None:
    """Ask with an image, regenerate (the new answer streams beside the first), say which answer is
    better under both, thumbs down the first with a reason, and write the answer wanted: every click
    lands in the database as a preference."""
    await open_chat(page, server.url, *newcomer)
    await set_max_new_tokens(page, 16)
    circuit = draw_circuit(tmp_path / "circuit.png")
    first = await ask(page, "Which resistor limits the LED current?", circuit)
    await wait_until_finished(page)
    first_shown = await text_of(first)

    await set_max_new_tokens(page, 256)  # a few seconds: long enough to watch the new answer grow
    await first.get_by_role("button", name="Regenerate").click()
    view = page.locator("[data-side-by-side]")
    columns = {side: view.locator(f"[data-column='{side}']") for side in "123"}
    await wait_until_column_longer(page, "2", 0)
    await wait_until_column_longer(page, "2", len(await columns["2"].inner_text()))  # it streams in place
    await expect(first).to_be_hidden()  # shown in the view, not a second time
    await wait_until_finished(page)

    await wait_until_side_by_side(page)
    one, two = [await columns[side].bounding_box() for side in "12"]
    assert one and two and one["x"] + one["width"] <= two["x"] and abs(one["y"] - two["y"]) < 2, "side by side"
    await expect(columns["1"]).to_contain_text(first_shown)
    second = page.locator(f"[id='step-{await columns['2'].get_attribute('data-answer-id')}']")
    await expect(second).to_be_hidden()
    choices = view.locator("[data-choices]")
    row = await choices.bounding_box()
    assert row and row["y"] >= max(one["y"] + one["height"], two["y"] + two["height"]), "the choice is under both"
    await view.evaluate("(view) => view.scrollIntoView({ block: 'start' })")
    await page.mouse.move(0, VIEWPORT["height"])
    await page.screenshot(path=artifacts / "browser-compare-side-by-side.png")

    await choices.get_by_role("button", name="Answer 2 is better").click()
    await expect(view).to_have_count(0, timeout=START)  # chosen: the answers show one under the other again
    await expect(second.get_by_role("button", name="✓ Answer 2 is better")).to_be_visible(timeout=START)
    await expect(second).to_contain_text("Answer 2 of 2")
    await expect(first).to_contain_text("Answer 1 of 2")
    await expect(page.get_by_text("Used on_message")).to_have_count(0)  # shown like any answer

    await rate_down(page, first, "It never names a resistor.")
    await expect_header_clear_of_the_banner(page)  # after the feedback dialog and the compare view
    await first.get_by_role("button", name="Misread the image").click()
    await expect(first.get_by_role("button", name="✓ Misread the image")).to_be_visible(timeout=START)
    await first.scroll_into_view_if_needed()
    await page.mouse.move(0, VIEWPORT["height"])
    await page.screenshot(path=artifacts / "browser-regenerated-and-rated.png")
    await first.get_by_role("button", name="Write the answer you wanted").click()
    await expect(page.get_by_text("Write the answer you wanted. It is kept")).to_be_visible(timeout=START)
    wanted = "R1 (330 Ω): with S1 closed it sets I = (9 V - 2 V) / 1330 Ω ≈ 5.3 mA."
    await page.locator("#chat-input").fill(wanted)
    await page.locator("#chat-input").press("Enter")
    await expect(page.get_by_text("your answer is saved as the preferred one")).to_be_visible(timeout=START)
    await expect(page.locator("#stop-button")).to_be_hidden()  # nothing left running

    thread_id = await thread_id_of(page)
    first_id, second_id = [(await answer.get_attribute("id")).removeprefix("step-") for answer in (first, second)]
    assert await preferences_of(server, thread_id) == {
        "comparisons": [(first_id, second_id, "b")],
        "feedbacks": [(first_id, 0, '["misread_image"]')],
        "corrections": [(first_id, wanted)],
    }

    # The export: the second answer over the first (the comparison), the correction over the first.
    from tests.helpers.server import export_rows, rows
    from tests.helpers.shown import answer_text

    [(first_text,), (second_text,)] = [
        rows(server, "SELECT output FROM steps WHERE id = ?", i)[0] for i in (first_id, second_id)
    ]
    exported = export_rows(server, tmp_path / "dpo")
    mine = [
        row for row in exported if row["prompt"][-1]["content"][-1]["text"] == "Which resistor limits the LED current?"
    ]
    assert sorted(
        (row["rule"], row["chosen"][0]["content"][0]["text"], row["rejected"][0]["content"][0]["text"]) for row in mine
    ) == [
        ("comparison", answer_text(second_text), answer_text(first_text)),
        ("correction", wanted, answer_text(first_text)),
    ]
    assert all(row["images"] == [f"images/{hashlib.sha256(circuit.read_bytes()).hexdigest()}.png"] for row in mine)

    # A third answer, beside the second; closed without a choice, the three show one under the other.
    await second.get_by_role("button", name="Regenerate").click()
    await expect(columns["3"]).to_be_visible(timeout=START)
    await expect(second).to_be_hidden()
    await wait_until_finished(page)
    third = page.locator(f"[id='step-{await columns['3'].get_attribute('data-answer-id')}']")
    await view.get_by_role("button", name="Show one under the other").click()
    await expect(view).to_have_count(0)
    for shown, label in ((first, "Answer 1 of 3"), (second, "Answer 2 of 3"), (third, "Answer 3 of 3")):
        await expect(shown).to_be_visible()
        await expect(shown).to_contain_text(label, timeout=START)  # relabelled once the new answer has ended
    await expect(third.get_by_role("button", name="Answer 3 is better")).to_be_visible()


async def preferences_of(server: Server, thread_id: str) -> dict[str, list[tuple]]:
    """The thread's comparisons, ratings (by answer) and corrections, as stored."""
    from tests.helpers.server import rows

    queries = {
        "comparisons": "SELECT answer_a, answer_b, choice FROM comparisons WHERE thread_id = ?",
        "feedbacks": "SELECT s.id, f.value, f.reasons FROM feedbacks f JOIN steps s ON s.parent_id = f.for_id "
        "WHERE f.thread_id = ? AND s.type = 'assistant_message'",
        "corrections": "SELECT answer_id, text FROM corrections WHERE thread_id = ?",
    }
    return {name: rows(server, query, thread_id) for name, query in queries.items()}


async def readme_screenshot(destination: Path) -> None:
    """A finished short answer about a circuit diagram, 1280x800, for the README."""
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("Chromium not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory() as app_root:
        process, server = start_server(Path(app_root))
        try:
            async with async_playwright() as playwright:
                browser = await launch(playwright, chromium)
                context = await browser.new_context(viewport=VIEWPORT, locale="en-US")
                page = await context.new_page()
                await open_chat(page, server.url)
                await set_max_new_tokens(page, 64)  # a whole answer fits on screen beside the image
                circuit = draw_circuit(Path(app_root) / "circuit.png")
                await ask(page, "What current flows through D1 when S1 is closed? Assume a 2 V LED drop.", circuit)
                await wait_until_finished(page)
                await page.mouse.move(0, VIEWPORT["height"])  # no hover tooltips in the picture
                await page.screenshot(path=destination)
                await browser.close()
        finally:
            process.terminate()
            process.wait(timeout=20)


async def test_a_dropped_pdf_is_answered_from_and_its_cited_page_opens(
    page: Page, server: Server, newcomer: tuple[str, str], artifacts: Path, tmp_path: Path
) -> None:
    """Drop a datasheet on the page, ask about one of its facts: the answer streams, names the pages it
    was shown, and the cited page opens beside the chat as the image the model saw."""
    data, facts = facts_pdf(6, seed=21)
    fact = facts[3]
    datasheet = tmp_path / "datasheet.pdf"
    datasheet.write_bytes(data)
    await open_chat(page, server.url, *newcomer)
    await set_max_new_tokens(page, 64)

    before = await page.locator(ANSWERS).count()
    await page.locator("#chat-input").fill(fact.question)
    await page.locator("#upload-button-input").set_input_files(datasheet)
    await expect(page.locator("#attachments")).to_contain_text(datasheet.name, timeout=START)
    await expect(page.locator("#chat-submit")).to_be_enabled(timeout=START)
    await record_lengths_while_running(page)
    await page.locator("#chat-input").press("Enter")
    answer = await new_answer(page, before)
    await wait_until_finished(page)
    shown = await lengths_while_running(page, answer)
    assert len(shown) >= 2 and shown[0] < shown[-1], f"the answer grows in place while it runs: {shown}"

    citation = f"datasheet.pdf, p. {fact.page}"
    await expect(answer).to_contain_text("Sources:", timeout=START)
    await expect(answer).to_contain_text(citation)
    await asyncio.sleep(1)  # a preview panel that opens by itself does so as the sources arrive
    await expect(page.locator("#side-view-title")).to_have_count(0)  # nothing opens until a source is clicked
    await answer.get_by_text(citation, exact=True).click()
    await expect(page.locator("#side-view-title")).to_have_text(citation, timeout=START)
    await expect(page.locator("#side-view-content img")).to_have_count(1)  # that page, not every page cited
    preview = page.locator(f"#side-view-content img[alt='{citation}']")
    await expect(preview).to_be_visible(timeout=START)
    width = await expect_loaded(preview)
    assert 0 < width <= 1280, "the page as rendered for the model, within the CPU pixel budget"
    await page.mouse.move(0, VIEWPORT["height"])
    await page.screenshot(path=artifacts / "browser-cited-page.png")


async def test_a_chat_begun_without_text_is_named_and_its_library_answer_can_be_stopped(
    page: Page, server: Server, artifacts: Path, tmp_path: Path
) -> None:
    """A chat begun by a PDF dropped without a question, then the Library list: the history names the chat
    after the PDF, and a Library question's answer shows Stop while it streams (Chainlit's page shows Stop only
    in a chat whose first message named it: an empty first message hid it for every answer after)."""
    data, facts = facts_pdf(4, seed=5)
    datasheet = tmp_path / "relay-datasheet.pdf"
    datasheet.write_bytes(data)
    add_account(server, "lena", "lena-password-1")  # a library of her own: this PDF alone
    await open_chat(page, server.url, "lena", "lena-password-1")
    await set_max_new_tokens(page, 512)  # long enough to stop mid-answer
    await page.locator("#upload-button-input").set_input_files(datasheet)
    await expect(page.locator("#attachments")).to_contain_text(datasheet.name, timeout=START)
    await expect(page.locator("#chat-submit")).to_be_enabled(timeout=START)
    await page.locator("#chat-submit").click()
    await expect(page.get_by_text(f"Read {datasheet.name}")).to_be_visible(timeout=START)
    await page.locator("#command-Library").click()
    await page.locator("#chat-submit").click()
    await expect(page.get_by_text("Your documents (1)")).to_be_visible(timeout=START)
    for notice in ("Your documents (1)", f"Read {datasheet.name}"):  # notices, not answers: nothing to rate
        shown = page.locator(ANSWERS).filter(has_text=notice)
        await expect(shown.locator(".positive-feedback-off, .negative-feedback-off")).to_have_count(0)

    before = await page.locator(ANSWERS).count()
    await page.locator("#command-Library").click()
    await page.locator("#chat-input").fill(facts[1].question)
    await page.locator("#chat-input").press("Enter")
    answer = await new_answer(page, before)
    await expect(page.locator("#stop-button")).to_be_visible()
    await page.locator("#stop-button").click()
    await expect(answer).to_contain_text(STOPPED, timeout=10_000)
    await expect(page.locator("#chat-submit")).to_be_visible()
    await expect(answer.locator(".negative-feedback-off")).to_be_enabled()  # an answer: rated, in a named chat
    sidebar = page.locator("[data-side='left'][data-state]")
    if await sidebar.get_attribute("data-state", timeout=START) == "collapsed":
        await page.locator("#header #sidebar-trigger-button").click()
    await expect(page.locator("#thread-history").get_by_text(datasheet.name, exact=True)).to_be_visible(timeout=START)
    await page.screenshot(path=artifacts / "browser-library-answer-stopped.png")


@pytest.fixture(scope="module")
def arena_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with one adapter beside the base model, so that the Arena profile is offered."""
    adapters = tmp_path_factory.mktemp("adapters")
    save_adapter(adapters / "engineering-v1", seed=1)
    process, running = start_server(tmp_path_factory.mktemp("app"), LOUPE_ADAPTERS_DIR=str(adapters))
    yield running
    stop_server(process)


async def test_arena_streams_both_answers_side_by_side_and_the_vote_under_both_is_a_battle(
    page: Page, arena_server: Server, artifacts: Path
) -> None:
    """In the Arena, answers A and B stream into two columns, A left and B right, with the vote row
    under both; a vote stores the battle and names the contenders. On a narrow page they stack."""
    await open_chat(page, arena_server.url)
    await page.locator("#chat-profiles").click()
    await page.locator("[data-test='select-item:Arena']").click()
    await expect(page.get_by_text("Each question is answered by two models")).to_be_visible(timeout=START)
    await set_max_new_tokens(page, 256)  # a few seconds per answer: long enough to watch both grow

    await page.locator("#chat-input").fill("What torque for an M8 bolt?")
    await page.locator("#chat-input").press("Enter")
    battle = page.locator("[data-side-by-side]")
    columns = {side: battle.locator(f"[data-column='{side}']") for side in "AB"}
    for side in "AB":  # each column grows while the run is going: it streams in place
        await wait_until_column_longer(page, side, 0)
        await wait_until_column_longer(page, side, len(await columns[side].inner_text()))
    await wait_until_finished(page)

    a, b = [await columns[side].bounding_box() for side in "AB"]
    assert a and b and a["x"] + a["width"] <= b["x"], "B is right of A"
    assert abs(a["y"] - b["y"]) < 2, "A and B start on the same line"
    for side in "AB":
        shown = await columns[side].inner_text()
        assert shown.startswith(f"Answer {side}") and len(shown) > len(f"Answer {side}") + 20, shown
    for side in "AB":  # the answers' own messages, stored as any answer is, are not shown a second time
        answer_id = await columns[side].get_attribute("data-answer-id")
        await expect(page.locator(f"[id='step-{answer_id}']")).to_be_hidden()
    votes = battle.locator("[data-choices]")
    row = await votes.bounding_box()
    assert row and row["y"] >= max(a["y"] + a["height"], b["y"] + b["height"]), "the votes are under both"
    assert row["x"] <= a["x"] + a["width"] and row["x"] + row["width"] >= b["x"], "...spanning both columns"
    await battle.evaluate("(battle) => battle.scrollIntoView({ block: 'start' })")  # both headers in the picture
    await page.mouse.move(0, VIEWPORT["height"])
    await page.screenshot(path=artifacts / "browser-arena-side-by-side.png")

    await click_until_sent(page, votes.get_by_role("button", name="Answer A is better"))
    await expect(page.get_by_text("Answer A was ")).to_be_visible(timeout=START)
    await expect_header_clear_of_the_banner(page)
    await expect(votes.get_by_role("button", name="✓ Answer A is better")).to_be_visible()
    [(contender_a, contender_b, choice)] = await stored(
        arena_server, "SELECT contender_a, contender_b, choice FROM battles", count=1
    )
    assert contender_a != contender_b and choice == "a"
    shown_a = "the base model" if contender_a == "base" else contender_a
    await expect(columns["A"].locator("header")).to_contain_text(f"Answer A · {shown_a}")
    await page.screenshot(path=artifacts / "browser-arena-voted.png")

    await page.set_viewport_size({"width": 560, "height": 800})
    try:  # once the page has laid itself out again
        await page.wait_for_function(
            """() => {
                const [a, b] = ["A", "B"].map((side) => document.querySelector(`[data-column='${side}']`));
                return b.getBoundingClientRect().top >= a.getBoundingClientRect().bottom - 1;
            }""",
            timeout=10_000,
        )
    except PlaywrightTimeoutError:
        a, b = [await columns[side].bounding_box() for side in "AB"]
        pytest.fail(f"on a narrow page B is not under A: {a}, {b}")


async def test_a_korean_page_is_korean_from_the_login_to_the_readme(
    browser: Browser, arena_server: Server, artifacts: Path
) -> None:
    """For ko-KR: the login asks for a user name and says in Korean when it is wrong (not "credentialssignin");
    the commands, the profiles and the in-app Readme are Korean; the Readme's close button is not under the demo
    banner, and the banner covers no header."""
    add_account(arena_server, "minji", "minji-password-1")  # a new user: the team's default profile
    context = await browser.new_context(viewport=VIEWPORT, locale="ko-KR")
    page = await context.new_page()
    await page.goto(arena_server.url)
    await expect(page.get_by_text("사용자 이름", exact=True)).to_be_visible(timeout=START)
    await page.locator("#email").fill("minji")
    await page.locator("#password").fill("not-the-password")
    await page.locator("#password").press("Enter")
    await expect(page.get_by_text(text("login_failed", "ko")).first).to_be_visible(timeout=START)
    await expect(page.get_by_text("credentialssignin")).to_have_count(0)
    await page.locator("#password").fill("minji-password-1")
    await page.locator("#password").press("Enter")
    await expect(page.locator(ANSWERS).filter(has_text="데모 모델입니다.")).to_have_count(1, timeout=START)

    for command in ("문서함", "대시보드"):
        await expect(page.locator(f"[id='command-{command}']")).to_be_visible()
    await expect(page.locator("#chat-profiles")).to_contain_text("기본 모델")
    await page.locator("#chat-profiles").click()
    await expect(page.locator("[data-test='select-item:Arena']")).to_contain_text("아레나")
    await page.locator("[data-test='select-item:Base model']").click()  # the one chosen: the picker closes
    await expect(page.locator("[data-test='select-item:Arena']")).to_be_hidden()

    await page.locator("#readme-button").click()
    readme = page.get_by_role("dialog")
    await expect(readme).to_contain_text("질문하기", timeout=START)  # chainlit_ko.md, not chainlit.md
    await expect(readme).to_contain_text("문서함")
    close = readme.get_by_role("button", name="Close")
    reachable = "(button) => { const r = button.getBoundingClientRect();"
    reachable += " return button.contains(document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2)); }"
    assert await close.evaluate(reachable), "the Readme's close button is covered"
    await page.screenshot(path=artifacts / "browser-korean-readme.png")
    await close.click()
    await expect(readme).to_be_hidden()
    await expect_header_clear_of_the_banner(page)
    await page.screenshot(path=artifacts / "browser-korean-chat.png")
    await context.close()


async def test_the_dashboard_draws_its_charts_for_an_admin_and_for_a_user(
    browser: Browser, arena_server: Server, artifacts: Path
) -> None:
    """The Dashboard command draws five Plotly charts, of everyone's data for an admin and of the user's own
    for anyone else: each chart shows what its CSV file holds, trace for trace and point for point."""
    add_account(arena_server, "carol", "carol-password-1")
    async with ChatClient(arena_server.url, username="carol", password="carol-password-1") as carol:
        await carol.change_settings(GREEDY)
        await rated_answer(carol, "Which pull-up for I2C at 400 kHz?", 1, "helpful")
        await rated_answer(carol, "And at 100 kHz?", 0, "wrong")
    async with ChatClient(arena_server.url, username="carol", password="carol-password-1", profile="Arena") as carol:
        await carol.change_settings(GREEDY)
        await battle(carol, "Which bolt grade is stronger?", "a")
    for username, password, whose in (
        ("admin", ADMIN_PASSWORD, "(everyone's data)"),
        ("carol", "carol-password-1", "(your data)"),
    ):
        context = await browser.new_context(viewport=VIEWPORT, locale="en-US")
        page = await context.new_page()
        await open_chat(page, arena_server.url, username, password)
        await page.locator("#command-Dashboard").click()
        await page.locator("#chat-submit").click()
        await expect(page.get_by_text(whose)).to_be_visible(timeout=START)
        charts = page.locator(".js-plotly-plot")
        await expect(charts).to_have_count(5, timeout=FINISH)  # leaderboard, thumbs, reasons, battles, data
        try:  # each drawn from its figure, not bare axes
            await page.wait_for_function(
                "() => [...document.querySelectorAll('.js-plotly-plot')].every((chart) => chart.data?.length)",
                timeout=START,
            )
        except PlaywrightTimeoutError:
            drawn = await charts.evaluate_all("(charts) => charts.map((chart) => chart.data?.length ?? 0)")
            pytest.fail(f"charts drawn without their data: {drawn} traces")
        drawn = await charts.evaluate_all(
            "(charts) => charts.map((chart) => [chart.layout.title.text, chart._fullLayout.paper_bgcolor,"
            " chart.data.map((trace) => ({ name: trace.name, x: trace.x, y: trace.y }))])"
        )
        for title, background, traces in drawn:
            assert background == "rgba(0, 0, 0, 0)", f"{title} is a {background} card on the page's own theme"
            name = CHART_FILES[title]
            link = page.locator(f"a[download='{name}']")
            csv = table(await (await page.request.get(arena_server.url + await link.get_attribute("href"))).text())
            assert csv, f"{name} is empty: the chart would show nothing either way"
            expected_traces, expected_points = chart_of(name, csv)
            assert len(traces) == expected_traces, f"{title}: {len(traces)} traces for {name}"
            assert points_of(name, traces) == expected_points, f"{title} does not show {name}"
        await page.mouse.move(0, VIEWPORT["height"])
        await page.screenshot(path=artifacts / f"browser-dashboard-{username}.png", full_page=True)
        await context.close()


# Each chart's file by the chart's title as drawn.
CHART_FILES = {
    text(key, "en"): name
    for key, name in (
        ("chart_leaderboard", "leaderboard.csv"),
        ("chart_feedback", "feedback.csv"),
        ("chart_reasons", "reasons.csv"),
        ("chart_battles", "battles.csv"),
        ("chart_dataset", "dataset.csv"),
    )
}


def chart_of(name: str, csv: list[dict[str, str]]) -> tuple[int, set[tuple]]:
    """The traces a chart must draw from its CSV file, and its points as (trace, x, y)."""
    if name == "leaderboard.csv":  # two traces (style-controlled, plain): a point per contender in each
        points = {(key, float(row[key]), row["contender"]) for row in csv for key in ("score", "plain")}
        return 2, points
    if name == "battles.csv":  # two traces (stored, counted): a bar per day in each
        return 2, {(key, row["day"], int(row[key])) for row in csv for key in ("stored", "counted")}
    if name == "feedback.csv":  # a line per contender: its share of thumbs up per day
        return len({row["contender"] for row in csv}), {
            (row["contender"], row["day"], float(row["up_share"])) for row in csv
        }
    if name == "reasons.csv":  # bars per contender: answers per reason
        return len({row["contender"] for row in csv}), {
            (row["contender"], reason_label(row["reason"], "en"), int(row["answers"])) for row in csv
        }
    return len({row["adapter"] for row in csv}), {(row["adapter"], row["rule"], int(row["rows"])) for row in csv}


def points_of(name: str, traces: list[dict]) -> set[tuple]:
    """The points a chart draws, as chart_of names them."""
    if name == "leaderboard.csv":  # x is the score (the CSV rounds it), y the contender with its flags
        keys = {text("chart_style_controlled", "en"): "score", text("chart_plain", "en"): "plain"}
        return {
            (keys[trace["name"]], round(x, 1), label.split(" (")[0])
            for trace in traces
            for x, label in zip(trace["x"], trace["y"], strict=True)
        }
    if name == "battles.csv":
        keys = {text("chart_stored", "en"): "stored", text("chart_counted", "en"): "counted"}
        return {(keys[trace["name"]], x, y) for trace in traces for x, y in zip(trace["x"], trace["y"], strict=True)}
    rounding = 4 if name == "feedback.csv" else 0
    return {
        (trace["name"], x, round(y, rounding) if rounding else y)
        for trace in traces
        for x, y in zip(trace["x"], trace["y"], strict=True)
    }


async def wait_until_column_longer(page: Page, side: str, length: int) -> None:
    """Wait until the side-by-side column's text exceeds `length` while the run is still going."""
    await page.wait_for_function(
        """([side, length]) => {
            const column = document.querySelector(`[data-column='${side}']`);
            return column !== null && column.innerText.length > length
                && document.getElementById("stop-button") !== null;
        }""",
        arg=[side, length],
        timeout=FINISH,
    )


async def wait_until_side_by_side(page: Page) -> None:
    """Wait (a few seconds at most) until columns 1 and 2 are laid out as the test then checks: the page may still
    be laying out the view just after the run ends, which once failed the check in a full run."""
    await page.wait_for_function(
        """() => {
            const [one, two] = ["1", "2"].map((side) => document.querySelector(`[data-column='${side}']`));
            if (one === null || two === null) return false;
            const [a, b] = [one.getBoundingClientRect(), two.getBoundingClientRect()];
            return a.right <= b.left && Math.abs(a.top - b.top) < 2;
        }""",
        timeout=5_000,
    )


async def set_max_new_tokens(page: Page, tokens: int) -> None:
    """Move the settings panel's "Max new tokens" slider (step 16) with its keyboard keys and confirm."""
    await page.locator("#chat-settings-open-modal").click()
    slider = page.locator("#max_new_tokens [role='slider']")
    await slider.press("Home")
    for _ in range((tokens - 16) // 16):
        await slider.press("ArrowRight")
    await expect(slider).to_have_attribute("aria-valuenow", str(tokens))
    await page.get_by_role("button", name="Confirm").click()
    await expect(slider).to_be_hidden()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "public" / "screenshot.png"
    asyncio.run(readme_screenshot(target))
    print(f"wrote {target}")
