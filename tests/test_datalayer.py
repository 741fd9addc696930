"""The data layer on real SQLite and PostgreSQL: migrations, Chainlit's call orders, feedback, generations."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from chainlit.context import init_http_context
from chainlit.element import Image as ChainlitImage
from chainlit.types import Feedback as ChainlitFeedback
from chainlit.types import Pagination, ThreadFilter
from chainlit.user import PersistedUser
from chainlit.user import User as ChainlitUser
from sqlalchemy import Connection, func, inspect, select, text, update

from chat.arena.leaderboard import outcomes, standings
from chat.store.database import create_engine, downgrade, session_factory, upgrade
from chat.store.schema import Base, Element, Feedback, Generation, Step, Thread, is_orm_object
from chat.ui.datalayer import MAX_THREAD_NAME_CHARS, LoupeDataLayer, NotYours
from tests.helpers.databases import thread_rows


async def count(layer: LoupeDataLayer, model: type) -> int:
    async with layer.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model))


SECONDS = itertools.count()


def step(thread_id: str, type: str = "user_message", output: str = "hello", **fields) -> dict:
    """A step as Chainlit sends it; each one a second later than the one before."""
    seconds = next(SECONDS)
    return {
        "id": str(uuid.uuid4()),
        "threadId": thread_id,
        "type": type,
        "name": "User",
        "output": output,
        "createdAt": f"2026-11-21T10:{seconds // 60 % 60:02d}:{seconds % 60:02d}.000Z",
        **fields,
    }


def test_migrations_go_up_and_down_and_match_the_models(database_url: str) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")
    assert table_names(database_url) <= {"alembic_version"}
    upgrade(database_url)
    assert table_names(database_url) >= {table.name for table in Base.metadata.sorted_tables}
    assert schema_differences(database_url) == []


def table_names(url: str) -> set[str]:
    return asyncio.run(_inspect(url, lambda connection: set(inspect(connection).get_table_names())))


def schema_differences(url: str) -> list:
    return asyncio.run(
        _inspect(
            url,
            lambda connection: compare_metadata(
                MigrationContext.configure(connection, opts={"include_name": is_orm_object}), Base.metadata
            ),
        )
    )


async def _inspect(url: str, look: Callable[[Connection], Any]) -> Any:
    engine = create_engine(url)
    async with engine.connect() as connection:
        result = await connection.run_sync(look)
    await engine.dispose()
    return result


async def test_users_are_created_once(layer: LoupeDataLayer) -> None:
    first = await layer.create_user(ChainlitUser(identifier="ada"))
    again = await layer.create_user(ChainlitUser(identifier="ada"))
    assert first.id == again.id and first.identifier == "ada"
    assert await layer.get_user("nobody") is None


async def test_step_before_thread_then_owner_and_name_arrive(layer: LoupeDataLayer) -> None:
    """Chainlit's first-message race: the step is stored first, the thread gets its owner later."""
    thread_id = str(uuid.uuid4())
    await layer.create_step(step(thread_id, output="What is this circuit?"))
    assert await layer.get_thread_author(thread_id) == ""
    owner = await layer.create_user(ChainlitUser(identifier="ada"))
    await layer.update_thread(thread_id, name="What is this circuit?", user_id=owner.id)
    thread = await layer.get_thread(thread_id)
    assert (thread["userIdentifier"], thread["name"]) == ("ada", "What is this circuit?")
    assert [s["output"] for s in thread["steps"]] == ["What is this circuit?"]
    assert await layer.get_thread_author(thread_id) == "ada"


async def test_concurrent_first_writes_create_one_thread(layer: LoupeDataLayer) -> None:
    thread_id = str(uuid.uuid4())
    await asyncio.gather(*(layer.create_step(step(thread_id, output=f"m{n}")) for n in range(20)))
    assert await count(layer, Thread) == 1
    assert await count(layer, Step) == 20


async def test_updating_a_step_keeps_one_row_with_the_new_output(layer: LoupeDataLayer) -> None:
    answer = step(str(uuid.uuid4()), type="assistant_message", output="")
    await layer.create_step(answer)
    await layer.update_step({**answer, "output": "R = V / I = 5 V / 10 mA = 500 Ohm"})
    [stored] = (await layer.get_thread(answer["threadId"]))["steps"]
    assert stored["output"] == "R = V / I = 5 V / 10 mA = 500 Ohm"
    assert stored["createdAt"] == answer["createdAt"]


def generation(**fields) -> dict:
    """A generation record as chat/ui/answers.py puts it in an answer's metadata."""
    return {
        "model": "demo",
        "adapter": "engineering-v1",
        "adapter_version": "ab12",
        "prompt_id": None,
        "context": [],
        "settings": {"temperature": 0.7},
        "prompt_tokens": 300,
        "completion_tokens": 42,
        "time_to_first_token": 0.12,
        "duration": 1.5,
        "ended": "finished",
        "completion": "R = V / I",
        **fields,
    }


async def test_the_record_names_the_backend_that_wrote_the_answer(layer: LoupeDataLayer) -> None:
    answer = step(str(uuid.uuid4()), type="assistant_message", metadata={"generation": generation(backend="vllm")})
    await layer.create_step(answer)
    async with layer.sessions() as session:
        assert await session.scalar(select(Generation.backend)) == "vllm"


async def test_generation_record_is_written_with_its_answer(layer: LoupeDataLayer) -> None:
    record = generation(ended="stopped", prompt_id="q2", context=["a1"])
    answer = step(str(uuid.uuid4()), type="assistant_message", metadata={"generation": record})
    await layer.create_step(answer)
    await layer.update_step(answer)  # sent again when the message is finalised: still one record
    async with layer.sessions() as session:
        [stored] = (await session.scalars(select(Generation))).all()
    assert (stored.step_id, stored.ended, stored.completion_tokens) == (answer["id"], "stopped", 42)
    assert (stored.prompt_id, stored.context) == ("q2", ["a1"])


async def test_element_is_stored_by_content_and_outlives_the_upload(layer: LoupeDataLayer, tmp_path: Path) -> None:
    thread_id = str(uuid.uuid4())
    upload = tmp_path / "upload.png"
    upload.write_bytes(b"\x89PNG fake bytes")
    element = ChainlitImage(name="diagram.png", path=str(upload), mime="image/png", thread_id=thread_id)
    await layer.create_element(element)
    upload.unlink()  # Chainlit wipes .files at shutdown
    [stored] = (await layer.get_thread(thread_id))["elements"]
    assert stored["name"] == "diagram.png" and stored["url"] == f"/loupe/files/{stored['objectKey']}"
    assert layer.store.path(stored["objectKey"]).read_bytes() == b"\x89PNG fake bytes"
    assert await layer.get_element(thread_id, element.id) == stored


async def test_a_file_asked_for_before_its_element_is_written_is_found_once_writes_settle(
    layer: LoupeDataLayer,
) -> None:
    """Chainlit writes an element in a task of its own and tells the page its url at once; the file route
    waits for the writes under way (settle_writes) before it answers that no element names the file."""
    thread_id = str(uuid.uuid4())
    preview = ChainlitImage(name="datasheet.pdf, p. 4", content=b"\x89PNG page", mime="image/png", thread_id=thread_id)
    writing = asyncio.create_task(layer.create_element(preview))  # as Chainlit's Element.send does
    await layer.settle_writes()
    assert writing.done()
    [stored] = (await layer.get_thread(thread_id))["elements"]
    assert layer.store.path(stored["objectKey"]).read_bytes() == b"\x89PNG page"


async def test_feedback_is_upserted_shown_and_withdrawn(layer: LoupeDataLayer) -> None:
    owner = await layer.create_user(ChainlitUser(identifier="ada"))
    run = step(str(uuid.uuid4()), type="run", output="")
    await layer.create_step(run)
    await layer.update_thread(run["threadId"], user_id=owner.id)

    first = await layer.upsert_feedback(ChainlitFeedback(forId=run["id"], value=0, comment="misread R2"))
    again = await layer.upsert_feedback(ChainlitFeedback(forId=run["id"], value=1, comment=None))
    assert first == again
    [rated] = (await layer.get_thread(run["threadId"]))["steps"]
    assert rated["feedback"] == {"id": first, "forId": run["id"], "value": 1, "comment": None}

    assert await layer.delete_feedback(first)
    [rated] = (await layer.get_thread(run["threadId"]))["steps"]
    assert "feedback" not in rated


async def test_reasons_survive_a_repeated_thumb_and_are_cleared_when_it_flips(layer: LoupeDataLayer) -> None:
    owner = await layer.create_user(ChainlitUser(identifier="ada"))
    run = step(str(uuid.uuid4()), type="run", output="")
    await layer.create_step(run)
    await layer.update_thread(run["threadId"], user_id=owner.id)

    async def reasons_after(value: int) -> list[str]:
        await layer.upsert_feedback(ChainlitFeedback(forId=run["id"], value=value, comment="edited"))
        async with layer.sessions() as session:
            return await session.scalar(select(Feedback.reasons).where(Feedback.for_id == run["id"]))

    assert await reasons_after(0) == []
    async with layer.sessions.begin() as session:
        await session.execute(update(Feedback).values(reasons=["wrong", "unsafe"]))
    assert await reasons_after(0) == ["wrong", "unsafe"]  # the comment was edited: same thumb, same reasons
    assert await reasons_after(1) == []


async def test_feedback_for_an_unknown_step_is_refused(layer: LoupeDataLayer) -> None:
    with pytest.raises(LookupError):
        await layer.upsert_feedback(ChainlitFeedback(forId=str(uuid.uuid4()), value=1))


async def test_threads_are_listed_per_user_newest_first_in_pages(layer: LoupeDataLayer) -> None:
    ada, bob = await layer.create_user(ChainlitUser(identifier="ada")), await layer.create_user(ChainlitUser("bob"))
    ids = []
    for n in range(5):
        thread_id = str(uuid.uuid4())
        await layer.update_thread(thread_id, name=f"question {n}", user_id=ada.id)
        ids.append(thread_id)
    await layer.update_thread(str(uuid.uuid4()), name="bob's", user_id=bob.id)

    first_page = await layer.list_threads(Pagination(first=3), ThreadFilter(userId=ada.id))
    second_page = await layer.list_threads(
        Pagination(first=3, cursor=first_page.pageInfo.endCursor), ThreadFilter(userId=ada.id)
    )
    assert [t["id"] for t in first_page.data + second_page.data] == ids[::-1]
    assert first_page.pageInfo.hasNextPage and not second_page.pageInfo.hasNextPage

    found = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=ada.id, search="QUESTION 3"))
    assert [t["name"] for t in found.data] == ["question 3"]


async def test_deleting_a_thread_removes_everything_in_it(layer: LoupeDataLayer, tmp_path: Path) -> None:
    thread_id = str(uuid.uuid4())
    await layer.create_step(step(thread_id))
    (tmp_path / "a.png").write_bytes(b"image")
    await layer.create_element(ChainlitImage(name="a.png", path=str(tmp_path / "a.png"), thread_id=thread_id))
    await layer.delete_thread(thread_id)
    assert [await count(layer, model) for model in (Thread, Step, Element)] == [0, 0, 0]
    assert await layer.get_thread(thread_id) is None


async def test_sqlite_runs_in_wal_mode(layer: LoupeDataLayer) -> None:
    async with layer.sessions() as session:
        if session.bind.dialect.name != "sqlite":
            pytest.skip("SQLite only")
        assert (await session.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await session.execute(text("PRAGMA foreign_keys"))).scalar() == 1


async def test_stored_thread_rebuilds_the_model_history_with_images(layer: LoupeDataLayer, tmp_path: Path) -> None:
    """What resume does: user turns with their images, our answers, and nothing else."""
    from PIL import Image

    from chat.conversation import history_from_thread, turn_images, turn_text

    thread_id = str(uuid.uuid4())
    question = step(thread_id, output="Which resistor is larger?")
    run = step(thread_id, type="run", output="", parentId=question["id"])
    notice = step(thread_id, type="assistant_message", output="**Demo model.** ...")
    answer = step(thread_id, type="assistant_message", output="R2\n\n⏹ *Stopped.*", parentId=run["id"])
    answer["metadata"] = {
        "ended": "stopped",
        "generation": generation(prompt_id=question["id"], ended="stopped", completion="R2"),
    }
    Image.new("RGB", (300, 200), (0, 0, 255)).save(tmp_path / "r.png")
    for stored in (notice, question, run, answer):
        await layer.create_step(stored)
    await layer.create_element(
        ChainlitImage(name="r.png", path=str(tmp_path / "r.png"), thread_id=thread_id, for_id=question["id"])
    )
    thread = await layer.get_thread(thread_id)
    keys = {element["forId"]: element["objectKey"] for element in thread["elements"]}

    def images_of(step_id: str) -> list:
        return [Image.open(layer.store.path(keys[step_id]))] if step_id in keys else []

    history = history_from_thread(thread["steps"], images_of)
    assert [turn_text(message) for message in history] == ["Which resistor is larger?", "R2"]
    assert [image.size for image in turn_images(history[0])] == [(300, 200)]


# Two accounts: a write never touches another user's thread ------------------------------------


async def acting_as(layer: LoupeDataLayer, name: str) -> PersistedUser:
    """Make `name` the logged-in user of the calls that follow, as Chainlit's context does."""
    user = await layer.create_user(ChainlitUser(identifier=name))
    init_http_context(user=user)
    return user


async def test_another_user_can_write_nothing_into_a_thread(layer: LoupeDataLayer, tmp_path: Path) -> None:
    ada = await acting_as(layer, "ada")
    thread = str(uuid.uuid4())
    prompt = step(thread, output="What is R2?")
    run = step(thread, type="run", output="", parentId=prompt["id"])
    answer = step(
        thread,
        type="assistant_message",
        output="4.7 kOhm",
        parentId=run["id"],
        metadata={"generation": generation(prompt_id=prompt["id"])},
    )
    for written in (prompt, run, answer):
        await layer.create_step(written)
    await layer.update_thread(thread, name="ada's circuit", user_id=ada.id)
    image = ChainlitImage(name="circuit.png", content=b"\x89PNG ada", mime="image/png", thread_id=thread)
    await layer.create_element(image)
    feedback_id = await layer.upsert_feedback(ChainlitFeedback(forId=run["id"], value=1))
    before = await thread_rows(layer.sessions, thread)

    bob = await acting_as(layer, "bob")
    own = str(uuid.uuid4())
    await layer.create_step(step(own, output="bob's own question"))
    attempts = {
        "move ada's answer into bob's thread": layer.update_step({**answer, "threadId": own, "output": "forged"}),
        "rewrite ada's answer": layer.update_step({**answer, "output": "forged"}),
        "recreate ada's prompt": layer.create_step({**prompt, "output": "a different question"}),
        "add a step to ada's thread": layer.create_step(step(thread, output="injected")),
        "delete ada's answer": layer.delete_step(answer["id"]),
        "rename ada's thread": layer.update_thread(thread, name="mine"),
        "take ada's thread": layer.update_thread(thread, user_id=bob.id),
        "delete ada's thread": layer.delete_thread(thread),
        "add an element to ada's thread": layer.create_element(
            ChainlitImage(name="x.png", content=b"bob", mime="image/png", thread_id=thread)
        ),
        "delete ada's element without a thread id": layer.delete_element(image.id),
        "delete ada's element with its thread id": layer.delete_element(image.id, thread),
        "rate ada's answer": layer.upsert_feedback(ChainlitFeedback(forId=run["id"], value=0, comment="bad")),
        "withdraw ada's rating": layer.delete_feedback(feedback_id),
    }
    refused = []
    for name, attempt in attempts.items():
        try:
            await attempt
        except NotYours:
            refused.append(name)
    assert await thread_rows(layer.sessions, thread) == before
    assert refused == list(attempts)  # each one refused loudly (and logged), none silently
    assert [s["output"] for s in (await layer.get_thread(own))["steps"]] == ["bob's own question"]


async def test_a_stored_user_message_is_never_rewritten_and_only_answers_get_generation_records(
    layer: LoupeDataLayer,
) -> None:
    ada = await acting_as(layer, "ada")
    thread = str(uuid.uuid4())
    prompt = step(thread, output="What is R2?")
    await layer.create_step(prompt)
    await layer.update_thread(thread, user_id=ada.id)
    with pytest.raises(NotYours):  # a second message with the id of the first: the prompt an answer had stays
        await layer.create_step({**prompt, "output": "What is R3?"})
    with pytest.raises(NotYours):  # a user message cannot become an answer
        await layer.update_step({**prompt, "type": "assistant_message", "metadata": {"generation": generation()}})
    await layer.create_step(step(thread, metadata={"generation": generation()}))  # a user message "with" a record
    assert await count(layer, Generation) == 0
    assert [s["output"] for s in (await layer.get_thread(thread))["steps"]] == ["What is R2?", "hello"]


async def test_thread_names_are_capped(layer: LoupeDataLayer) -> None:
    ada = await acting_as(layer, "ada")
    thread = str(uuid.uuid4())
    await layer.update_thread(thread, name="x" * 100_000, user_id=ada.id)
    assert (await layer.get_thread(thread))["name"] == "x" * MAX_THREAD_NAME_CHARS


async def test_migration_flags_generation_records_a_client_could_have_written(migrated: str) -> None:
    """Before 5b1f0c2a9d47, a client could store a "model answer" of its own; the migration flags
    every record not in the shape the server writes, and the export leaves flagged ones out."""
    engine = create_engine(migrated)
    async with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(table.delete())
    downgrade(migrated, "243b13670f21")
    thread, now = str(uuid.uuid4()), datetime(2026, 11, 30, 10)
    steps = {  # id: (type, parent)
        "prompt": ("user_message", None),
        "run": ("run", "prompt"),
        "answer": ("assistant_message", "run"),
        "forged-bare": ("assistant_message", None),  # a client_message of type assistant_message
        "forged-in-run": ("assistant_message", "run"),  # ... naming the real run as its parent
        "forged-user": ("user_message", None),
    }
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO threads (id, tags, metadata, created_at) VALUES (:id, '[]', '{}', :now)"),
            {"id": thread, "now": now},
        )
        for step_id, (type_, parent) in steps.items():
            await connection.execute(
                text(
                    "INSERT INTO steps (id, thread_id, parent_id, name, type, input, output, is_error, metadata,"
                    " default_open, auto_collapse, created_at) VALUES (:id, :thread, :parent, 'x', :type, '', 'x',"
                    " false, '{}', false, false, :now)"
                ),
                {"id": step_id, "thread": thread, "parent": parent, "type": type_, "now": now},
            )
        for step_id in ("answer", "forged-bare", "forged-in-run", "forged-user"):
            await connection.execute(
                text(
                    "INSERT INTO generations (id, step_id, thread_id, prompt_id, context, model, settings,"
                    " prompt_tokens, completion_tokens, duration, ended, created_at) VALUES (:id, :id, :thread,"
                    " 'prompt', '[]', 'demo', '{}', 1, 1, 1.0, 'finished', :now)"
                ),
                {"id": step_id, "thread": thread, "now": now},
            )
    upgrade(migrated)
    async with engine.connect() as connection:
        flagged = dict((await connection.execute(text("SELECT step_id, flagged FROM generations"))).all())
        await connection.execute(text("DELETE FROM threads"))
        await connection.commit()
    await engine.dispose()
    assert flagged == {
        "answer": "two answers in one run",  # beside a forged one, neither can be trusted
        "forged-in-run": "two answers in one run",
        "forged-bare": "not under a run",
        "forged-user": "not an answer step",
    }


async def test_migration_back_fills_what_the_model_wrote(migrated: str) -> None:
    """Before 8e3a61c0d2f4 an answer was stored only as the page showed it (label, stop marker);
    the migration stores the model's own text in the record, in the table and in the step's metadata."""
    engine = create_engine(migrated)
    async with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(table.delete())
    downgrade(migrated, "5b1f0c2a9d47")
    thread, now = str(uuid.uuid4()), datetime(2026, 11, 30, 10)
    shown = {  # step id: the answer as stored before -> what the model wrote
        "plain": ("R = V / I", "R = V / I"),
        "numbered": ("*Answer 2 of 3*\n\nAbout 160 Hz.", "About 160 Hz."),
        "arena-ko": ("*답변 B*\n\n1kΩ입니다.", "1kΩ입니다."),
        "stopped": ("*Answer 1 of 2*\n\nLet me\n```\n\n⏹ *Stopped.*", "Let me\n```"),
        "stopped-ko": ("P =\n\n⏹ *중지됨.*", "P ="),
        "quoting": ("Say *Answer 2 of 3* here.", "Say *Answer 2 of 3* here."),
    }
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO threads (id, tags, metadata, created_at) VALUES (:id, '[]', '{}', :now)"),
            {"id": thread, "now": now},
        )
        for step_id, (output, _) in shown.items():
            metadata = '{"ended": "finished", "generation": {"model": "demo", "prompt_id": "q"}}'
            await connection.execute(
                text(
                    "INSERT INTO steps (id, thread_id, parent_id, name, type, input, output, is_error, metadata,"
                    " default_open, auto_collapse, created_at) VALUES (:id, :thread, NULL, 'x', 'assistant_message',"
                    " '', :output, false, :metadata, false, false, :now)"
                ),
                {"id": step_id, "thread": thread, "output": output, "metadata": metadata, "now": now},
            )
            await connection.execute(
                text(
                    "INSERT INTO generations (id, step_id, thread_id, prompt_id, context, model, settings,"
                    " prompt_tokens, completion_tokens, duration, ended, created_at) VALUES (:id, :id, :thread,"
                    " 'q', '[]', 'demo', '{}', 1, 1, 1.0, 'finished', :now)"
                ),
                {"id": step_id, "thread": thread, "now": now},
            )
    upgrade(migrated)
    async with engine.connect() as connection:
        columns = dict((await connection.execute(select(Generation.step_id, Generation.completion))).all())
        backends = set((await connection.scalars(select(Generation.backend))).all())
        records = {
            step_id: metadata["generation"]
            for step_id, metadata in (await connection.execute(select(Step.id, Step.metadata_))).all()
        }
        await connection.execute(text("DELETE FROM threads"))
        await connection.commit()
    await engine.dispose()
    wrote = {step_id: completion for step_id, (_, completion) in shown.items()}
    assert columns == wrote
    assert {step_id: record["completion"] for step_id, record in records.items()} == wrote
    assert all(record["model"] == "demo" for record in records.values()), "the rest of the record is kept"
    assert backends == {"local"}, "c4d9e2b7a1f3: every earlier answer came from the in-process model"


async def test_migration_renames_stored_battles_element(migrated: str) -> None:
    """Before b3d5f7a9c2e4 a stored battle was drawn by ArenaBattle.jsx, now SideBySide.jsx; other
    elements named so (an uploaded file called ArenaBattle) keep their names."""
    engine = create_engine(migrated)
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM threads"))
    downgrade(migrated, "a7e4b2c9d1f0")
    thread, now = str(uuid.uuid4()), datetime(2026, 12, 1, 10)
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO threads (id, tags, metadata, created_at) VALUES (:id, '[]', '{}', :now)"),
            {"id": thread, "now": now},
        )
        for element_id, type_ in (("battle", "custom"), ("upload", "file")):
            await connection.execute(
                text(
                    "INSERT INTO elements (id, thread_id, type, name, display, props, created_at)"
                    " VALUES (:id, :thread, :type, 'ArenaBattle', 'inline', '{}', :now)"
                ),
                {"id": element_id, "thread": thread, "type": type_, "now": now},
            )
    upgrade(migrated)
    async with engine.connect() as connection:
        names = dict((await connection.execute(text("SELECT id, name FROM elements"))).all())
        await connection.execute(text("DELETE FROM threads"))
        await connection.commit()
    await engine.dispose()
    assert names == {"battle": "SideBySide", "upload": "ArenaBattle"}


async def test_migration_flags_battles_no_arena_held(migrated: str) -> None:
    """Before e6b8d2f4a1c3 a vote made a battle of any two answers to one prompt that a resumed Arena chat
    offered buttons for; the migration flags those whose answers are not both the arena's (blind), keeps
    their votes as voted, and the leaderboard reports them and does not count them."""
    engine = create_engine(migrated)
    async with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(table.delete())
    downgrade(migrated, "b3d5f7a9c2e4")
    thread, now = str(uuid.uuid4()), datetime(2026, 12, 2, 10)
    blind = '{"blind": true, "generation": {"completion": "x"}}'
    answers = {  # answer step: (prompt, metadata, adapter)
        "arena-a": ("arena-q", blind, None),
        "arena-b": ("arena-q", blind, "v1"),
        "asked": ("chat-q", "{}", None),  # asked under "Base model"
        "regenerated": ("chat-q", "{}", "v1"),  # regenerated under the adapter's profile
    }
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO users (id, identifier, token_version, metadata, created_at)"
                " VALUES ('u', 'ann', 0, '{}', :now)"
            ),
            {"now": now},
        )
        await connection.execute(
            text("INSERT INTO threads (id, user_id, tags, metadata, created_at) VALUES (:id, 'u', '[]', '{}', :now)"),
            {"id": thread, "now": now},
        )
        steps = [(prompt, "user_message", "{}", "Which bolt?") for prompt in ("arena-q", "chat-q")]
        steps += [(answer, "assistant_message", metadata, "x") for answer, (_, metadata, _) in answers.items()]
        for step_id, type_, metadata, output in steps:
            await connection.execute(
                text(
                    "INSERT INTO steps (id, thread_id, name, type, input, output, is_error, metadata,"
                    " default_open, auto_collapse, created_at) VALUES (:id, :thread, 'x', :type, '', :output,"
                    " false, :metadata, false, false, :now)"
                ),
                {"id": step_id, "thread": thread, "type": type_, "output": output, "metadata": metadata, "now": now},
            )
        for step_id, (prompt, _, adapter) in answers.items():
            await connection.execute(
                text(
                    "INSERT INTO generations (id, step_id, thread_id, prompt_id, context, model, adapter, settings,"
                    " sources, prompt_tokens, completion_tokens, duration, ended, completion, created_at) VALUES"
                    " (:id, :id, :thread, :prompt, '[]', 'demo', :adapter, '{}', '[]', 1, 1, 1.0, 'finished', 'x',"
                    " :now)"
                ),
                {"id": step_id, "thread": thread, "prompt": prompt, "adapter": adapter, "now": now},
            )
        for battle, (a, b) in {"held": ("arena-a", "arena-b"), "forged": ("asked", "regenerated")}.items():
            await connection.execute(
                text(
                    "INSERT INTO battles (id, thread_id, user_id, prompt_id, answer_a, answer_b, contender_a,"
                    " contender_b, choice, blind_choice, created_at, updated_at) VALUES (:id, :thread, 'u',"
                    " :prompt, :a, :b, 'base', 'v1', 'b', 'b', :now, :now)"
                ),
                {"id": battle, "thread": thread, "prompt": answers[a][0], "a": a, "b": b, "now": now},
            )
    upgrade(migrated)
    board = standings(await outcomes(session_factory(engine)))
    async with engine.connect() as connection:
        battles = (await connection.execute(text("SELECT id, flagged, voted_at FROM battles ORDER BY id"))).all()
        await connection.execute(text("DELETE FROM threads"))
        await connection.execute(text("DELETE FROM users"))
        await connection.commit()
    await engine.dispose()
    assert [(battle, flagged) for battle, flagged, _ in battles] == [("forged", "no arena held it"), ("held", None)]
    assert all(voted_at is not None for *_, voted_at in battles), "every stored battle was voted"
    assert (board.stored, board.counted, board.not_counted) == (2, 1, {"no arena held it": 1})
