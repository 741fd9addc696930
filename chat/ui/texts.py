"""Everything Loupe says to users, in English and Korean.

Chainlit translates its own interface (.chainlit/translations); these are our messages. The
language is the browser's (Accept-Language), as Chainlit picks it.
"""

from __future__ import annotations

import re

from chat.arena.leaderboard import TABLE_WORDS
from chat.arena.profiles import Profile
from chat.store.generations import Source
from models.backend import DemoReason, Ended

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "demo_notice": (
            "**Demo model.** Answers come from a tiny Qwen2-VL with random weights, so they are noise. "
            "Why: {reason}. For real answers, set `LOUPE_MODEL` to a Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint "
            "(a local folder or a hub id such as `Qwen/Qwen2-VL-2B-Instruct`) and restart."
        ),
        "queued": "⏳ Waiting for the model: {ahead} request(s) ahead of you.",
        "stopped": "■ *Stopped.*",
        "interrupted": "⚠️ *Interrupted: the server stopped while writing this answer. Regenerate it for a whole one.*",
        "not_saved_answer": (
            "⚠️ **The answer above was not saved**: the database could not be reached. It will not be in this "
            "chat's history; copy what you need from it now."
        ),
        "not_saved_message": (
            "⚠️ **Your message was not saved**: the database could not be reached. It will not be in this "
            "chat's history; send it again in a moment."
        ),
        "empty_message": "Your message is empty. Type a question, attach an image, or both.",
        "rejected_files": (
            "I could not use your message because of its attachments:\n{problems}\n\nPlease fix them and send it again."
        ),
        "too_many_files": "you attached {count} files; at most {limit} can go in one message",
        "prompt_too_long": (
            "Your message is too long for the model's context: it needs {needed} tokens and {budget} fit. "
            "Shorten the text, attach fewer images, or lower *Max new tokens*."
        ),
        "model_error": "The model failed while answering. Please try again (reference {reference}).",
        "model_unavailable": (
            "The model server is not answering right now (busy, restarting or down). Your question was not "
            "answered: please send it again in a moment (reference {reference})."
        ),
        "adapter_refused": "The model server cannot use this profile's adapter: {reason}. Choose another profile.",
        "server_error": "Something went wrong on the server. Please try again (reference {reference}).",
        "database_unreachable": (
            "⚠️ The server cannot reach its database right now, so that was not taken. Please try again in a moment."
        ),
        "message_malformed": "That message could not be read, so it was not sent.",
        "message_too_long": (
            "Your message has {length:,} characters; at most {limit:,} fit in one message. "
            "It was not sent: shorten it or split it."
        ),
        "too_many_messages": "You are sending messages faster than Loupe can answer. Wait {seconds} s, then resend.",
        "login_ended": "This login has ended (logged out, or the password changed). Log in again to continue.",
        "settings_refused": "These settings were not changed, because their values are out of range: {names}.",
        "out_of_memory": (
            "The model ran out of memory while answering. Try fewer or smaller images, a shorter "
            "conversation (start a new chat), or lower *Max new tokens*."
        ),
        "answer_label": "*Answer {number} of {count}*",
        "arena_label": "*Answer {side}*",
        "arena_intro": (
            "**Arena.** Each question is answered by two models drawn at random (the base model and the "
            "adapters), shown as *Answer A* and *Answer B*. Say which is better to see which was which; "
            "your votes rank them.\n\n{leaderboard}"
        ),
        "arena_reveal": "Answer A was **{a}**; answer B was **{b}**.",
        "column_title": "Answer {side}",
        "column_waiting": "Waiting for the model: {ahead} request(s) ahead…",
        "column_writing": "Writing…",
        "column_stopped": "Stopped",
        "column_failed": "No answer",
        "choice_question": "Which answer is better?",
        "side_by_side_close": "Show one under the other",
        "base_model": "the base model",
        "profile_base": "The base model, without an adapter.",
        "profile_adapter": "LoRA adapter `{name}` (version {version}){details}.",
        "profile_arena": "Blind A/B: two models answer each question; you pick the better one.",
        "regenerate": "Regenerate",
        "compare_a": "Answer {number} is better",
        "compare_b": "Answer {number} is better",
        "compare_tie": "Tie",
        "compare_both_bad": "Both bad",
        "correct": "Write the answer you wanted",
        "correction_ask": "Write the answer you wanted. It is kept as the preferred answer to your question.",
        "correction_saved": "Thank you: your answer is saved as the preferred one.",
        "not_yours": "That answer is not in this chat.",
        "voted_once": "This battle has its vote: a battle is voted once, before the reveal.",
        "rate_first": "Rate the answer first (thumbs up or down), then pick reasons.",
        "reason_wrong": "Wrong",
        "reason_incomplete": "Incomplete",
        "reason_misread_image": "Misread the image",
        "reason_wrong_language": "Wrong language",
        "reason_unsafe": "Unsafe",
        "reason_other": "Other",
        "reason_correct": "Correct",
        "reason_helpful": "Helpful",
        "reason_clear": "Clear",
        "setting_prompt": "Assistant style",
        "setting_temperature": "Temperature",
        "setting_top_p": "Top-p",
        "setting_max_new_tokens": "Max new tokens",
        "setting_repetition_penalty": "Repetition penalty",
        # Reasons an attachment is refused; `name` is the file's name.
        "file_too_big": "the file is {size_mb:.1f} MB; the limit is {limit_mb:g} MB",
        "empty": "the file is empty",
        "not_an_image": (
            "it is not a file Loupe can read: an image (PNG, JPEG, WebP, BMP, GIF or TIFF), a PDF or UTF-8 text"
        ),
        "unsupported_format": "{format} images are not supported; use PNG, JPEG, WebP, BMP, GIF or TIFF",
        "too_large": "the image has {megapixels:g} megapixels; the limit is {limit:g}",
        "bomb": "the image has far too many pixels to open safely; the limit is {limit:g} megapixels",
        "elongated": "its shape ({width}x{height}) is too elongated; one side may be at most {limit} times the other",
        "corrupt": "the file is truncated or corrupt",
        "metadata_bomb": "its embedded text metadata would expand to far too much data to read safely",
        "not_a_pdf": "it is not a PDF",
        "pdf_truncated": "the PDF is cut short (its end is missing); upload the whole file again",
        "pdf_damaged": "the PDF is damaged and cannot be read",
        "pdf_encrypted": "the PDF is protected by a password; save a copy without the password and upload that",
        "pdf_no_pages": "the PDF has no pages",
        "pdf_too_many_pages": "the PDF has {pages} pages; the limit is {limit}",
        "pdf_too_much_memory": "reading the PDF needs more than {limit_mb} MB of memory, the limit for one document",
        "pdf_too_slow": (
            "the PDF takes too long to read: more than {limit:g} s of computing, the limit for one document"
        ),
        "pdf_page_too_slow": (
            "page {page} of the PDF takes too long to read: more than {limit:g} s of computing, the limit for one page"
        ),
        "pdf_too_much_text": "the PDF holds more than {limit:,} characters of text, the limit for one document",
        "not_text": "it is not UTF-8 text",
        "text_too_long": "the text is too long ({pages} parts of about 3,000 characters; the limit is {limit})",
        # Documents
        "reading_document": "Reading **{name}**: page {done} of {total}…",
        "read_document": "Read **{name}**: {total} pages, now in your library.",
        "sources": "Sources",
        "documents_read": "Read {names}: ask about them in your next message.",
        "login_failed": "Wrong user name or password.",
        "demo_asked": "`LOUPE_MODEL` is set to `demo`",
        "demo_unreachable": "`{model}` is not on this machine, and the model hub cannot be reached",
        "ask_without_files": "Ask it without the attachments",
        "profile_base_name": "Base model",
        "profile_arena_name": "Arena",
        "command_library": "Library",
        "command_dashboard": "Dashboard",
        "untitled_chat": "New chat",
        "library_command": "Ask across all your documents (send it empty to list them)",
        "library_empty": "Your library is empty: attach a PDF or a text file to a message to add it.",
        "library_list": "**Your documents** ({count}):\n{entries}",
        "library_entry": "- {name}: {pages} pages, added {added}",
        "library_remove": "Remove {name}",
        "library_removed": "Removed **{name}** from your library: no question of yours will find or cite it again.",
        "library_not_there": "That document is no longer in your library.",
        "dashboard_command": "Charts of the leaderboard, feedback, battles and preference data",
        "command_keys": "API keys",
        "keys_command": "Your keys for Loupe's API: list, make and revoke them",
        "keys_list": "**Your API keys** ({count}), for programs that call Loupe's API as you (docs/api.md):\n{entries}",
        "keys_entry": "- **{name}**: made {made}, {expires}, {used}",
        "keys_expires": "expires {date}",
        "keys_expired": "EXPIRED",
        "keys_never_expires": "never expires",
        "keys_used": "last used {date}",
        "keys_never_used": "never used",
        "keys_none": "You have no API keys. A key lets a program (the `openai` SDK, LangChain) call Loupe as you.",
        "keys_new": "New API key",
        "keys_revoke": "Revoke {name}",
        "keys_made": (
            "Your new API key **{name}**; it is shown this once, and is not kept in this chat:\n\n`{secret}`\n\n"
            'Use it as `Authorization: Bearer <key>`, or `OpenAI(base_url="<this site>/v1", api_key="<key>")`.'
        ),
        "keys_revoked": "Revoked **{name}**: programs using it are refused from now on.",
        "keys_not_there": "That key no longer exists.",
        "dashboard_title": "Dashboard, {time}",
        "dashboard_everyone": "everyone's data",
        "dashboard_yours": "your data",
        "dashboard_only": "; only {contender}",
        "dashboard_summary": (
            "{counted} of {stored} battles counted on the leaderboard. Each chart's numbers are in the CSV file "
            "of the same name; the buttons narrow everything to one contender."
        ),
        "dashboard_all": "All contenders",
        "dashboard_counting": "Counting the preference data…",
        "dashboard_dataset": "**Preference data** that `python -m chat export` would write, by rule:",
        "chart_leaderboard": "Leaderboard (95% intervals)",
        "chart_score": "score (Elo scale)",
        "chart_style_controlled": "style-controlled",
        "chart_plain": "plain",
        "chart_feedback": "Thumbs up per day",
        "chart_up_share": "share of thumbs up",
        "chart_reasons": "Reasons given with thumbs",
        "chart_battles": "Battles per day",
        "chart_stored": "stored",
        "chart_counted": "counted",
        "chart_dataset": "Rows by pairing rule",
        "chart_empty": "Nothing yet: it fills in as answers are rated, compared and voted on.",
        **{f"board_{key}": words for key, words in TABLE_WORDS.items()},
    },
    "ko": {
        "demo_notice": (
            "**데모 모델입니다.** 답변은 무작위 가중치를 가진 작은 Qwen2-VL이 만든 것이라 의미가 없습니다. "
            "이유: {reason}. 실제 답변을 받으려면 `LOUPE_MODEL`을 Qwen2-VL, Qwen2.5-VL 또는 Qwen3-VL "
            "체크포인트(로컬 폴더 또는 `Qwen/Qwen2-VL-2B-Instruct` 같은 허브 ID)로 설정하고 다시 시작하세요."
        ),
        "queued": "⏳ 모델을 기다리는 중: 앞에 요청 {ahead}개가 있습니다.",
        "stopped": "■ *중지됨.*",
        "interrupted": "⚠️ *중단됨: 이 답변을 쓰는 중에 서버가 멈췄습니다. 전체 답변은 다시 생성하세요.*",
        "not_saved_answer": (
            "⚠️ **위 답변은 저장되지 않았습니다**: 데이터베이스에 연결할 수 없습니다. 이 대화 기록에 남지 "
            "않으니 필요한 내용은 지금 복사해 두세요."
        ),
        "not_saved_message": (
            "⚠️ **메시지가 저장되지 않았습니다**: 데이터베이스에 연결할 수 없습니다. 이 대화 기록에 남지 "
            "않으니 잠시 뒤 다시 보내 주세요."
        ),
        "empty_message": "메시지가 비어 있습니다. 질문을 입력하거나 이미지를 첨부하세요.",
        "rejected_files": (
            "첨부 파일 때문에 메시지를 사용할 수 없습니다:\n{problems}\n\n문제를 고친 뒤 다시 보내 주세요."
        ),
        "too_many_files": "파일 {count}개를 첨부했습니다. 한 메시지에는 최대 {limit}개까지 보낼 수 있습니다",
        "prompt_too_long": (
            "메시지가 모델의 컨텍스트보다 깁니다: {needed} 토큰이 필요하지만 {budget} 토큰만 들어갑니다. "
            "글을 줄이거나 이미지를 줄이거나 *최대 생성 토큰*을 낮추세요."
        ),
        "model_error": "답변 중 모델에 오류가 났습니다. 다시 시도해 주세요 (참조 {reference}).",
        "model_unavailable": (
            "모델 서버가 지금 응답하지 않습니다 (바쁨, 재시작 중 또는 중단). 질문에 답하지 못했으니 잠시 뒤 "
            "다시 보내 주세요 (참조 {reference})."
        ),
        "adapter_refused": "모델 서버가 이 프로필의 어댑터를 쓸 수 없습니다: {reason}. 다른 프로필을 고르세요.",
        "server_error": "서버에 문제가 생겼습니다. 다시 시도해 주세요 (참조 {reference}).",
        "database_unreachable": (
            "⚠️ 서버가 지금 데이터베이스에 연결할 수 없어 방금 보낸 것을 받지 못했습니다. 잠시 뒤 다시 시도해 주세요."
        ),
        "message_malformed": "메시지를 읽을 수 없어 보내지 않았습니다.",
        "message_too_long": (
            "메시지가 {length:,}자입니다. 한 메시지에는 최대 {limit:,}자까지 들어갑니다. "
            "보내지 않았으니 줄이거나 나누어 보내 주세요."
        ),
        "too_many_messages": "Loupe가 답할 수 있는 것보다 빠르게 보내고 있습니다. {seconds}초 뒤에 다시 보내 주세요.",
        "login_ended": "로그인이 끝났습니다 (로그아웃했거나 비밀번호가 바뀜). 계속하려면 다시 로그인하세요.",
        "settings_refused": "값이 허용 범위를 벗어나 다음 설정은 바꾸지 않았습니다: {names}.",
        "out_of_memory": (
            "답변 중 모델의 메모리가 부족했습니다. 이미지를 줄이거나 작게 하거나, 새 대화를 시작하거나, "
            "*최대 생성 토큰*을 낮춰 보세요."
        ),
        "answer_label": "*답변 {number} / {count}*",
        "arena_label": "*답변 {side}*",
        "arena_intro": (
            "**아레나.** 질문마다 무작위로 고른 두 모델(기본 모델과 어댑터들)이 *답변 A*와 *답변 B*로 "
            "답합니다. 더 나은 쪽을 고르면 어느 모델이었는지 보여 드리고, 투표로 순위가 매겨집니다.\n\n{leaderboard}"
        ),
        "arena_reveal": "작성한 모델: 답변 A는 **{a}**, 답변 B는 **{b}**.",
        "column_title": "답변 {side}",
        "column_waiting": "모델을 기다리는 중: 앞에 요청 {ahead}개…",
        "column_writing": "작성 중…",
        "column_stopped": "중지됨",
        "column_failed": "답변 없음",
        "choice_question": "어느 답변이 더 나은가요?",
        "side_by_side_close": "위아래로 보기",
        "base_model": "기본 모델",
        "profile_base": "어댑터 없는 기본 모델.",
        "profile_adapter": "LoRA 어댑터 `{name}` (버전 {version}){details}.",
        "profile_arena": "블라인드 A/B: 두 모델이 질문마다 답하고 더 나은 쪽을 고릅니다.",
        "regenerate": "다시 생성",
        "compare_a": "답변 {number} 쪽이 더 좋음",
        "compare_b": "답변 {number} 쪽이 더 좋음",
        "compare_tie": "비슷함",
        "compare_both_bad": "둘 다 나쁨",
        "correct": "원하는 답변 쓰기",
        "correction_ask": "원하던 답변을 써 주세요. 이 질문에 대한 더 나은 답변으로 저장됩니다.",
        "correction_saved": "고맙습니다. 써 주신 답변이 더 나은 답변으로 저장되었습니다.",
        "not_yours": "그 답변은 이 대화에 없습니다.",
        "voted_once": "이 대결은 이미 투표했습니다. 대결마다 공개 전에 한 번만 투표합니다.",
        "rate_first": "먼저 답변을 평가(좋아요 또는 싫어요)한 뒤 이유를 고르세요.",
        "reason_wrong": "틀림",
        "reason_incomplete": "불완전함",
        "reason_misread_image": "이미지를 잘못 읽음",
        "reason_wrong_language": "언어가 틀림",
        "reason_unsafe": "안전하지 않음",
        "reason_other": "기타",
        "reason_correct": "정확함",
        "reason_helpful": "도움이 됨",
        "reason_clear": "명확함",
        "setting_prompt": "어시스턴트 스타일",
        "setting_temperature": "온도 (Temperature)",
        "setting_top_p": "Top-p",
        "setting_max_new_tokens": "최대 생성 토큰",
        "setting_repetition_penalty": "반복 페널티",
        "file_too_big": "파일 크기가 {size_mb:.1f} MB입니다. 최대 {limit_mb:g} MB까지 가능합니다",
        "empty": "빈 파일입니다",
        "not_an_image": (
            "Loupe가 읽을 수 있는 파일이 아닙니다: 이미지(PNG, JPEG, WebP, BMP, GIF, TIFF), PDF, UTF-8 텍스트만 됩니다"
        ),
        "unsupported_format": "{format} 이미지는 지원하지 않습니다. PNG, JPEG, WebP, BMP, GIF, TIFF를 쓰세요",
        "too_large": "이미지가 {megapixels:g} 메가픽셀입니다. 최대 {limit:g} 메가픽셀까지 가능합니다",
        "bomb": "픽셀 수가 너무 많아 안전하게 열 수 없습니다. 최대 {limit:g} 메가픽셀까지 가능합니다",
        "elongated": "이미지 모양({width}x{height})이 너무 길쭉합니다. 한 변이 다른 변의 {limit}배를 넘을 수 없습니다",
        "corrupt": "파일이 잘렸거나 손상되었습니다",
        "metadata_bomb": "이미지에 든 텍스트 메타데이터가 풀면 너무 커져 안전하게 읽을 수 없습니다",
        "not_a_pdf": "PDF가 아닙니다",
        "pdf_truncated": "PDF가 중간에 잘렸습니다 (끝부분이 없음). 파일 전체를 다시 올려 주세요",
        "pdf_damaged": "PDF가 손상되어 읽을 수 없습니다",
        "pdf_encrypted": "PDF에 암호가 걸려 있습니다. 암호 없이 저장한 사본을 올려 주세요",
        "pdf_no_pages": "PDF에 페이지가 없습니다",
        "pdf_too_many_pages": "PDF가 {pages}페이지입니다. 최대 {limit}페이지까지 가능합니다",
        "pdf_too_much_memory": "PDF를 읽는 데 메모리가 {limit_mb}MB 넘게 필요합니다 (문서 하나의 한도)",
        "pdf_too_slow": "PDF를 읽는 데 너무 오래 걸립니다: 계산 시간이 문서 하나의 한도인 {limit:g}초를 넘습니다",
        "pdf_page_too_slow": (
            "PDF의 {page}페이지를 읽는 데 너무 오래 걸립니다: 계산 시간이 페이지 하나의 한도인 {limit:g}초를 넘습니다"
        ),
        "pdf_too_much_text": "PDF의 텍스트가 문서 하나의 한도인 {limit:,}자를 넘습니다",
        "not_text": "UTF-8 텍스트가 아닙니다",
        "text_too_long": "텍스트가 너무 깁니다 (약 3,000자씩 {pages}부분, 최대 {limit}부분)",
        "reading_document": "**{name}** 읽는 중: {total}페이지 중 {done}페이지…",
        "read_document": "**{name}** 읽기 완료: {total}페이지, 내 문서함에 넣었습니다.",
        "sources": "출처",
        "documents_read": "{names} 읽기 완료. 다음 메시지로 질문해 보세요.",
        "login_failed": "사용자 이름 또는 비밀번호가 틀렸습니다.",
        "demo_asked": "`LOUPE_MODEL`이 `demo`로 설정되어 있습니다",
        "demo_unreachable": "`{model}` 모델이 이 컴퓨터에 없고, 모델 허브에 연결할 수 없습니다",
        "ask_without_files": "첨부 없이 질문하기",
        "profile_base_name": "기본 모델",
        "profile_arena_name": "아레나",
        "command_library": "문서함",
        "command_dashboard": "대시보드",
        "untitled_chat": "새 채팅",
        "library_command": "내 모든 문서에서 찾아 답하기 (비워서 보내면 목록)",
        "library_empty": "문서함이 비어 있습니다. PDF나 텍스트 파일을 메시지에 첨부하면 들어갑니다.",
        "library_list": "**내 문서** ({count}개):\n{entries}",
        "library_entry": "- {name}: {pages}페이지, {added} 추가",
        "library_remove": "{name} 삭제",
        "library_removed": "내 문서함에서 **{name}** 문서를 뺐습니다. 이제 어떤 질문에도 찾거나 인용하지 않습니다.",
        "library_not_there": "그 문서는 이미 내 문서함에 없습니다.",
        "dashboard_command": "순위표, 피드백, 대결, 선호 데이터 차트",
        "command_keys": "API 키",
        "keys_command": "Loupe API용 내 키: 목록, 만들기, 폐기",
        "keys_list": "**내 API 키** ({count}개), 나로서 Loupe API를 호출하는 프로그램용 (docs/api.md):\n{entries}",
        "keys_entry": "- **{name}**: {made} 생성, {expires}, {used}",
        "keys_expires": "{date} 만료",
        "keys_expired": "만료됨",
        "keys_never_expires": "만료 없음",
        "keys_used": "{date} 마지막 사용",
        "keys_never_used": "사용한 적 없음",
        "keys_none": "API 키가 없습니다. 키가 있으면 프로그램(`openai` SDK, LangChain)이 나로서 Loupe를 호출합니다.",
        "keys_new": "새 API 키",
        "keys_revoke": "{name} 폐기",
        "keys_made": (
            "새 API 키 **{name}**입니다. 지금 한 번만 보이며 이 채팅에 저장되지 않습니다:\n\n`{secret}`\n\n"
            '`Authorization: Bearer <키>` 또는 `OpenAI(base_url="<이 사이트>/v1", api_key="<키>")`로 쓰세요.'
        ),
        "keys_revoked": "**{name}** 키를 폐기했습니다. 이제 이 키를 쓰는 프로그램은 거부됩니다.",
        "keys_not_there": "그 키는 이미 없습니다.",
        "dashboard_title": "대시보드, {time}",
        "dashboard_everyone": "모든 사용자의 데이터",
        "dashboard_yours": "내 데이터",
        "dashboard_only": "; {contender}만",
        "dashboard_summary": (
            "대결 {stored}건 중 {counted}건이 순위표에 반영되었습니다. 각 차트의 수치는 같은 이름의 CSV 파일에 "
            "있고, 버튼으로 모든 차트를 한 참가자로 좁힐 수 있습니다."
        ),
        "dashboard_all": "모든 참가자",
        "dashboard_counting": "선호 데이터를 세는 중…",
        "dashboard_dataset": "`python -m chat export`가 쓸 **선호 데이터**, 규칙별:",
        "chart_leaderboard": "순위표 (95% 구간)",
        "chart_score": "점수 (Elo 척도)",
        "chart_style_controlled": "스타일 보정",
        "chart_plain": "보정 없음",
        "chart_feedback": "일별 좋아요 비율",
        "chart_up_share": "좋아요 비율",
        "chart_reasons": "평가와 함께 고른 이유",
        "chart_battles": "일별 대결 수",
        "chart_stored": "저장됨",
        "chart_counted": "반영됨",
        "chart_dataset": "페어링 규칙별 행 수",
        "chart_empty": "아직 없습니다. 답변을 평가하고 비교하고 투표하면 채워집니다.",
        "board_rank": "순위",
        "board_contender": "참가자",
        "board_score": "점수 (95% 구간)",
        "board_battles": "대결 (승 / 무 / 패)",
        "board_held_out": "홀드아웃 정확도",
        "board_provisional_one": "잠정: 대결 1건, 순위를 매기기에는 너무 적음",
        "board_provisional": "잠정: 대결 {battles}건, 순위를 매기기에는 너무 적음",
        "board_retired": "이전 버전",
        "board_no_battles": "아직 대결이 없습니다.",
        "board_no_counted": "아직 반영된 대결이 없습니다 ({counts}).",
        "board_counted": "대결 {stored}건 중 {counted}건 반영",
    },
}


def language_of(locale: str | None) -> str:
    """'ko-KR' -> 'ko'; anything we have no texts for -> 'en'."""
    code = (locale or "en").split("-")[0].lower()
    return code if code in TEXTS else "en"


def text(key: str, language: str, **values: object) -> str:
    return TEXTS[language][key].format(**values)


def leaderboard_words(language: str) -> dict[str, str]:
    """The leaderboard table's words (chat/arena/leaderboard.py) in `language`, their placeholders unfilled."""
    return {key: TEXTS[language][f"board_{key}"] for key in TABLE_WORDS}


# A line that opens or closes a fenced block, as the page's Markdown reads it (CommonMark's code fences, and
# remark-math's display math, which .chainlit/config.toml's `latex` turns on): up to 3 spaces, then 3+ backticks
# or tildes, or 2+ dollar signs, then the rest of the line.
FENCE = re.compile(r" {0,3}(`{3,}|~{3,}|\${2,})(.*)")


def open_block(answer: str) -> str | None:
    """The fence of the code or display-math block `answer` leaves open, if it does.

    A block closes on a line of its own fence character, at least as long, and nothing else; a backtick or
    dollar fence followed by its own character on the line is inline code or math, not a block.
    """
    opened = None
    for line in answer.split("\n"):
        if not (match := FENCE.fullmatch(line)):
            continue
        fence, rest = match.groups()
        if opened is None and not (fence[0] in "`$" and fence[0] in rest):
            opened = fence
        elif opened and fence[0] == opened[0] and len(fence) >= len(opened) and not rest.strip():
            opened = None
    return opened


def mark_unfinished(answer: str, marker: str, language: str) -> str:
    """Append the marker of an unfinished answer (`stopped`, `interrupted`) outside any block it left open: a
    stopped answer ends anywhere, in a code block or a formula too, and the marker must read as Loupe's."""
    fence = open_block(answer)
    closing = f"\n{fence}" if fence else ""
    return f"{answer}{closing}\n\n{text(marker, language)}"


def shown_answer(
    completion: str, ended: Ended, language: str, label: str | None = None, sources: list[dict] | None = None
) -> str:
    """An answer as the page shows it: the model's text, under its label, marked if stopped or interrupted,
    and the document pages it was shown (its record's sources), each named as its preview is.

    Only the page sees this; the generation record keeps `completion` as the model wrote it.
    """
    unfinished = {Ended.STOPPED: "stopped", Ended.INTERRUPTED: "interrupted"}
    shown = mark_unfinished(completion, unfinished[ended], language) if ended in unfinished else completion
    if sources:
        cited = " · ".join(Source(**source).label for source in sources)
        shown = f"{shown}\n\n**{text('sources', language)}:** {cited}"
    return f"{label}\n\n{shown}" if label else shown


def demo_cause(reason: DemoReason, language: str) -> str:
    """Why the demo model serves, in the user's language (the error behind it stays in the log)."""
    return text(f"demo_{reason.code}", language, model=reason.model)


def profile_label(profile: Profile, language: str) -> str:
    """A profile as the picker names it: the base model and the arena in the chat's language, an adapter by its
    name (its `name` stays the profile's id, which the page sends back)."""
    if profile.is_arena:
        return text("profile_arena_name", language)
    return text("profile_base_name", language) if profile.adapter is None else profile.name


def describe_profile(profile: Profile, language: str) -> str:
    """A chat profile's line in the profile picker."""
    if profile.is_arena:
        return text("profile_arena", language)
    if profile.adapter is None:
        return text("profile_base", language)
    trained = profile.adapter.metadata()
    details = ""
    if {"method", "created_at"} <= trained.keys():
        details = f", {trained['method']}, {trained['created_at'][:10]}"
    return text("profile_adapter", language, name=profile.name, version=profile.adapter.version, details=details)


def reason_label(code: str, language: str) -> str:
    """A reason's label; codes configured beyond ours show as written (underscores as spaces)."""
    key = f"reason_{code}"
    return text(key, language) if key in TEXTS[language] else code.replace("_", " ")
