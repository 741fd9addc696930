"""The running app in a real browser: ask about an image, watch the answer stream, stop one.

Drives Debian's Chromium (`apt-get install chromium`) through Playwright's Python package, whose
wheel carries its own driver. Never run `playwright install`: it downloads a browser of its own.
Without Chromium these tests skip, except in CI (CI set), where they fail.

`python -m tests.test_browser` remakes public/screenshot.png, the picture in the README.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont
from playwright.async_api import Browser, Locator, Page, Playwright, ViewportSize, async_playwright, expect

from tests.conftest import ADMIN_PASSWORD, REPO, Server, start_server

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
QUEUED = "⏳"  # chat/texts.py "queued": the notice to a chat waiting for the model
STOPPED = "⏹ Stopped."  # chat/texts.py "stopped" ("⏹ *Stopped.*") as the page renders it

# The demo model writes up to 1024 tokens, at a few hundred a second on a CPU: ~30 s per answer.
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


async def open_chat(page: Page, url: str) -> None:
    """Log in as admin and wait for the demo notice: on_chat_start has run, so a message will be heard."""
    await page.goto(url)
    await page.locator("#email").fill("admin")
    await page.locator("#password").fill(ADMIN_PASSWORD)
    await page.locator("#password").press("Enter")
    await expect(page.locator(ANSWERS)).to_have_count(1, timeout=START)


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
    Pinned by its step id because Stop adds Chainlit's own "Task manually stopped." after it.
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


async def test_answer_streams_about_an_image_and_stops_on_request(
    page: Page, server: Server, artifacts: Path, tmp_path: Path
) -> None:
    """One chat, two questions: the first, with an image, streams to its end; the second is stopped."""
    await open_chat(page, server.url)
    await expect(page.locator("#loupe-demo-banner")).to_be_visible(timeout=START)

    circuit = draw_circuit(tmp_path / "circuit.png")
    answer = await ask(page, "What does this circuit do when S1 is closed?", circuit)
    sent_image = page.locator(f"[data-step-type='user_message'] img[alt='{circuit.name}']")
    await expect(sent_image).to_be_visible(timeout=START)
    await expect(page.locator("#stop-button")).to_be_visible()
    await wait_until_longer(page, answer, len(await answer.inner_text()))
    await wait_until_finished(page)
    finished = await answer.inner_text()
    assert STOPPED not in finished
    await sent_image.scroll_into_view_if_needed()
    await page.screenshot(path=artifacts / "browser-streamed-answer.png")

    # 1024 tokens take ~30 s, so Stop right after the first tokens lands mid-answer.
    answer = await ask(page, "Which resistor limits the LED current more?")
    partial = (await answer.inner_text()).strip()
    await page.locator("#stop-button").click()
    await expect(page.locator("#stop-button")).to_be_hidden(timeout=3_000)
    await expect(answer).to_contain_text(STOPPED, timeout=10_000)
    stopped = await answer.inner_text()
    assert partial in stopped, "the words streamed before Stop are gone"
    await asyncio.sleep(1)  # the only fixed wait: nothing may arrive after Stop
    assert await answer.inner_text() == stopped, "the answer kept growing after Stop"
    assert stopped.rstrip().endswith(STOPPED)
    await page.screenshot(path=artifacts / "browser-stopped-answer.png")


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
