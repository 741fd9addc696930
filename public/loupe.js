// Loupe: show a banner on every page while the app serves the demo model (random weights).
(async () => {
  const response = await fetch("/loupe/model");
  if (!response.ok) return;
  const model = await response.json();
  if (!model.demo) return;
  const korean = (navigator.language || "").toLowerCase().startsWith("ko");
  const banner = document.createElement("div");
  banner.id = "loupe-demo-banner";
  banner.setAttribute("role", "status");
  banner.textContent = korean
    ? "데모 모델: 무작위 가중치라 답변에 의미가 없습니다. LOUPE_MODEL을 Qwen2-VL 체크포인트로 설정하세요."
    : "Demo model: random weights, answers are noise. Set LOUPE_MODEL to a Qwen2-VL checkpoint.";
  document.body.prepend(banner);
  document.body.classList.add("loupe-demo");
})();

// Loupe: a cited page opens beside the chat when its source is clicked, showing that page under its name.
// Chainlit also opens the side panel by itself whenever previews arrive (an answer with sources, a resumed chat),
// titled with the last one and showing them all: such a panel, not asked for by a click, is closed at once.
(() => {
  let clicked = 0;
  document.addEventListener(
    "click",
    (event) => {
      if (event.target instanceof Element && event.target.closest(".element-link")) clicked = Date.now();
    },
    true,
  );
  const CLICK_MS = 1000; // a click opens the panel within a frame or two; an automatic opening comes unasked
  new MutationObserver(() => {
    const title = document.getElementById("side-view-title");
    const content = document.getElementById("side-view-content");
    if (!title || !content) return;
    const shown = `${title.textContent}|${content.childElementCount}`;
    if (title.dataset.loupeShown === shown) return;
    title.dataset.loupeShown = shown;
    if (content.childElementCount === 1 && Date.now() - clicked <= CLICK_MS) return;
    const close = title.querySelector("button"); // the wide page's panel; the narrow page's sheet closes on Escape
    if (close) close.click();
    else document.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape", bubbles: true }));
  }).observe(document.body, { childList: true, subtree: true, characterData: true });
})();
