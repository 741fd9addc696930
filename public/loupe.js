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
