"""Bradley-Terry scores with bootstrap intervals, from battles only."""

from __future__ import annotations

from chat.arena.leaderboard import Outcome, as_markdown, standings


def battles(a: str, b: str, choice: str, times: int) -> list[Outcome]:
    return [Outcome(a, b, choice)] * times


def test_the_contender_that_wins_more_ranks_first_with_an_interval_around_its_score() -> None:
    table = standings(battles("v2", "base", "a", 8) + battles("base", "v2", "a", 2) + battles("v1", "base", "tie", 4))
    assert [standing.contender for standing in table] == ["v2", "v1", "base"]
    for standing in table:
        assert standing.low <= standing.score <= standing.high
    v2, v1, base = table
    assert (v2.wins, v2.ties, v2.losses, v2.win_rate) == (8, 0, 2, 0.8)
    assert (v1.wins, v1.ties, v1.losses, v1.win_rate) == (0, 4, 0, 0.5)
    assert base.battles == 14
    assert abs(sum(standing.score for standing in table) / 3 - 1000) < 1e-6, "scores average 1000"


def test_an_unbeaten_contender_gets_a_finite_score_and_the_same_battles_the_same_table() -> None:
    unbeaten = battles("v3", "base", "a", 5)
    first, second = standings(unbeaten), standings(unbeaten)
    assert first == second
    assert 1000 < first[0].score < 2000


def test_both_bad_counts_as_a_tie_and_no_battles_say_so() -> None:
    [one, other] = standings(battles("v1", "base", "both_bad", 3))
    assert one.score == other.score and one.ties == 3
    assert as_markdown([]) == "No battles yet."
    assert "| 1 | v1 |" in as_markdown([one, other]) or "| 1 | base |" in as_markdown([one, other])
