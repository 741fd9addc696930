"""Regenerate, compare, reasons and corrections in the running app, driven like the web page.

Each test reads back what the database kept: the preferences are the product's training data.
"""

from __future__ import annotations

from tests.helpers.client import GREEDY, ChatClient, only_answer, png
from tests.helpers.server import export_rows, rows, stored


async def test_regenerate_keeps_both_answers_numbered_with_their_own_records(server) -> None:
    async with ChatClient(server.url) as client:
        await client.change_settings(GREEDY)
        image = await client.upload("gauge.png", png(), "image/png")
        first = only_answer(await client.ask("Read the gauge.", [image]))
        assert client.actions_for(first["id"], "regenerate"), "every answer offers Regenerate"

        await client.change_settings({"temperature": 1.2})
        second = only_answer(await client.regenerate(first["id"]))
        assert second["id"] != first["id"]
        assert second["output"].startswith("*Answer 2 of 2*\n\n")
        relabelled = [m for m in client.seen_messages if m["id"] == first["id"]][-1]
        assert relabelled["output"].startswith("*Answer 1 of 2*\n\n")

        third = only_answer(await client.regenerate(second["id"]))
        assert third["output"].startswith("*Answer 3 of 3*\n\n")
        follow_up = only_answer(await client.ask("Is that within range?"))

    records = await stored(
        server,
        "SELECT g.step_id, g.prompt_id, json_extract(g.settings, '$.temperature'), s.parent_id FROM generations g "
        "JOIN steps s ON s.id = g.step_id WHERE g.thread_id = ? ORDER BY g.created_at",
        client.thread_id,
        count=4,
    )
    records = records[:3]
    assert [step_id for step_id, *_ in records] == [first["id"], second["id"], third["id"]]
    assert len({prompt_id for _, prompt_id, _, _ in records}) == 1, "siblings answer one user message"
    assert [temperature for _, _, temperature, _ in records] == [0, 1.2, 1.2], "each records its own settings"
    assert len({run for *_, run in records}) == 3, "each answer is its own run, with its own thumbs"
    [(labels,)] = rows(server, "SELECT output FROM steps WHERE id = ?", first["id"])
    assert labels.startswith("*Answer 1 of 3*")
    [(context,)] = await stored(server, "SELECT context FROM generations WHERE step_id = ?", follow_up["id"], count=1)
    assert context == f'["{third["id"]}"]', "the conversation goes on from the newest answer"


async def test_compare_is_stored_as_an_explicit_choice_and_can_be_changed(server) -> None:
    async with ChatClient(server.url) as client:
        await client.change_settings(GREEDY)
        first = only_answer(await client.ask("Which bolt grade is stronger, 8.8 or 10.9?"))
        second = only_answer(await client.regenerate(first["id"]))
        buttons = {action["payload"]["choice"]: action for action in client.actions_for(second["id"], "compare")}
        assert [action["label"] for action in buttons.values()] == [
            "Answer 1 is better",
            "Answer 2 is better",
            "Tie",
            "Both bad",
        ]
        # The second answer was written beside the first, the same choice offered under both.
        [view] = [element for element in client.elements.values() if element["name"] == "SideBySide"]
        assert [column["answerId"] for column in view["props"]["columns"]] == [first["id"], second["id"]]
        assert [column["title"] for column in view["props"]["columns"]] == ["Answer 1", "Answer 2"]
        assert [vote["id"] for vote in view["props"]["votes"]] == [action["id"] for action in buttons.values()]
        assert view["props"]["closeLabel"] == "Show one under the other"

        (await client.click(buttons["b"])).raise_for_status()
        assert "✓ Answer 2 is better" in [action["label"] for action in client.actions_for(second["id"], "compare")]
        assert client.deleted == [view["forId"]], "chosen: the view closes, the answers show stacked again"
        (await client.click(buttons["both_bad"])).raise_for_status()

    choices = rows(server, "SELECT answer_a, answer_b, choice FROM comparisons WHERE thread_id = ?", client.thread_id)
    assert choices == [(first["id"], second["id"], "both_bad")], "the latest choice replaces the earlier one"
    assert not rows(server, "SELECT 1 FROM feedbacks WHERE thread_id = ?", client.thread_id), "not folded into thumbs"
    shown_only = "SELECT 1 FROM steps WHERE id = ? UNION ALL SELECT 1 FROM elements WHERE for_id = ?"
    assert not rows(server, shown_only, view["forId"], view["forId"]), "the view is never stored"


async def test_thumbs_down_offers_reasons_and_a_correction(server) -> None:
    async with ChatClient(server.url) as client:
        await client.change_settings(GREEDY)
        answer = only_answer(await client.ask("What torque for an M8 bolt?"))
        assert (await client.rate(answer["parentId"], 0, "far too low")).status_code == 200
        reasons = {action["payload"]["reason"]: action for action in client.actions_for(answer["id"], "reason")}
        assert list(reasons) == ["wrong", "incomplete", "misread_image", "wrong_language", "unsafe", "other"]
        for reason in ("wrong", "incomplete", "wrong"):  # ticking twice unticks
            (await client.click(reasons[reason])).raise_for_status()
        assert [action["label"] for action in client.actions_for(answer["id"], "reason")][:2] == [
            "Wrong",
            "✓ Incomplete",
        ]

        [correct] = client.actions_for(answer["id"], "correct")
        await client.ask_answers.put("About 25 N·m for grade 8.8, dry.")
        (await client.click(correct)).raise_for_status()
        assert "ask" in client.seen

        # Flipping the thumb starts the reasons afresh, with the thumbs-up list.
        assert (await client.rate(answer["parentId"], 1)).status_code == 200
        assert [action["payload"]["reason"] for action in client.actions_for(answer["id"], "reason")] == [
            "correct",
            "helpful",
            "clear",
        ]
        assert not client.actions_for(answer["id"], "correct")
        await client.click(client.actions_for(answer["id"], "reason")[1])

    [(value, comment, reasons_json)] = rows(
        server, "SELECT value, comment, reasons FROM feedbacks WHERE for_id = ?", answer["parentId"]
    )
    assert (value, comment, reasons_json) == (1, None, '["helpful"]')
    corrections = rows(server, "SELECT answer_id, text FROM corrections WHERE thread_id = ?", client.thread_id)
    assert corrections == [(answer["id"], "About 25 N·m for grade 8.8, dry.")]


async def test_resumed_chat_shows_every_answer_with_its_buttons_in_their_state(server) -> None:
    async with ChatClient(server.url) as client:
        await client.change_settings(GREEDY)
        first = only_answer(await client.ask("Name a pump type."))
        second = only_answer(await client.regenerate(first["id"]))
        await client.click(
            next(a for a in client.actions_for(second["id"], "compare") if a["payload"]["choice"] == "a")
        )
        await client.rate(second["parentId"], 0)
        await client.click(client.actions_for(second["id"], "reason")[0])
        thread_id = client.thread_id

    async with ChatClient(server.url, thread_id=thread_id) as resumed:
        assert resumed.actions_for(first["id"], "regenerate") and resumed.actions_for(second["id"], "regenerate")
        assert "✓ Answer 1 is better" in [a["label"] for a in resumed.actions_for(second["id"], "compare")]
        assert next(a["label"] for a in resumed.actions_for(second["id"], "reason")) == "✓ Wrong"
        assert resumed.actions_for(second["id"], "correct")
        # The conversation continues from the newest answer to the last turn.
        follow_up = only_answer(await resumed.ask("And another?"))
    [(context,)] = await stored(server, "SELECT context FROM generations WHERE step_id = ?", follow_up["id"], count=1)
    assert context == f'["{second["id"]}"]'


async def test_someone_elses_answer_cannot_be_regenerated_compared_or_corrected(server) -> None:
    from tests.helpers.server import add_account

    name, password = "mallory", "mallory-password-1"
    add_account(server, name, password)

    async with ChatClient(server.url) as owner:
        await owner.change_settings(GREEDY)
        answer = only_answer(await owner.ask("Private question."))
        second = only_answer(await owner.regenerate(answer["id"]))
        compare = owner.actions_for(second["id"], "compare")[0]
        regenerate = owner.actions_for(answer["id"], "regenerate")[0]
        await owner.rate(answer["parentId"], 0)
        correct = owner.actions_for(answer["id"], "correct")[0]
        reason = owner.actions_for(answer["id"], "reason")[0]

    async with ChatClient(server.url, username=name, password=password) as intruder:
        for button in (compare, regenerate, correct, reason):
            response = await intruder.click(button)  # a button this session was never shown
            assert response.status_code == 404, response.text
    assert rows(server, "SELECT choice FROM comparisons WHERE answer_b = ?", second["id"]) == []
    assert rows(server, "SELECT reasons FROM feedbacks WHERE for_id = ?", answer["parentId"]) == [("[]",)]
    assert rows(
        server,
        "SELECT COUNT(*) FROM generations WHERE prompt_id = (SELECT prompt_id FROM generations WHERE step_id = ?)",
        answer["id"],
    ) == [(2,)]


async def test_signals_given_in_the_app_export_as_the_pairing_rules_say(server, tmp_path) -> None:
    """Ask with an image, regenerate, prefer the second answer, thumbs the first down with a reason
    and correct it: the DPO export holds exactly the two pairs the rules give, with the image."""
    import hashlib

    from chat.prompts import system_prompts
    from tests.helpers.shown import answer_text

    picture = png(200, 150)
    async with ChatClient(server.url) as client:
        await client.change_settings(GREEDY)
        image = await client.upload("gauge.png", picture, "image/png")
        first = only_answer(await client.ask("게이지가 몇 bar를 가리키나요?", [image]))  # Korean round-trips
        await client.change_settings({"temperature": 1.0})  # greedy would write the same answer again
        second = only_answer(await client.regenerate(first["id"]))
        prefer_second = next(a for a in client.actions_for(second["id"], "compare") if a["payload"]["choice"] == "b")
        (await client.click(prefer_second)).raise_for_status()
        await client.rate(first["parentId"], 0)
        await client.click(client.actions_for(first["id"], "reason")[0])
        await client.ask_answers.put("4.2 bar입니다.")
        await client.click(client.actions_for(first["id"], "correct")[0])
        thread_id = client.thread_id
    await stored(server, "SELECT 1 FROM corrections WHERE thread_id = ?", thread_id, count=1)

    out = tmp_path / "dpo"
    mine = [
        row
        for row in export_rows(server, out)
        if row["prompt"][-1]["content"][-1]["text"] == "게이지가 몇 bar를 가리키나요?"
    ]
    image_file = f"images/{hashlib.sha256(picture).hexdigest()}.png"
    prompt = [
        {"role": "system", "content": [{"type": "text", "text": system_prompts()["engineering"]}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "게이지가 몇 bar를 가리키나요?"}]},
    ]

    def said(text: str) -> list[dict]:
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    first_text, second_text = answer_text(first["output"]), answer_text(second["output"])
    columns = ("rule", "images", "prompt", "chosen", "rejected", "chosen_by", "rejected_by")
    exported = sorted(tuple(row[column] for column in columns) for row in mine)
    assert exported == [
        ("comparison", [image_file], prompt, said(second_text), said(first_text), "base", "base"),
        ("correction", [image_file], prompt, said("4.2 bar입니다."), said(first_text), "user", "base"),
    ]
    assert (out / image_file).read_bytes() == picture
