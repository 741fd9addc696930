"""The dashboard in the chat (the Dashboard command): the leaderboard with its intervals, thumbs per adapter
version over time with their reasons, battles per day, and the preference data by rule, as Plotly charts
with a CSV of each, filterable by contender with buttons under it.

Whose data: the user's own; everyone's for the users in LOUPE_ADMINS. The scope comes from the logged-in
session only; a filter button carries a contender's name, never a user, and is answered only as it was
issued (chat/ui/routes.py), so no click widens what a user sees.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import chainlit as cl
import plotly.graph_objects as go

from chat.arena.leaderboard import Interval
from chat.dashboard.data import Dashboard, as_csv, dashboard, dataset_sizes, scope_for
from chat.dataset.stats import Tally
from chat.ui.chainlit_fixes import without_thumbs
from chat.ui.routes import stored_file_url
from chat.ui.runtime import serving
from chat.ui.texts import reason_label, text

FILTER = "dashboard"  # the filter buttons' action name
EVERY_CONTENDER = ""  # the filter button's payload for no filter
CHART_HEIGHT = 360  # px: a chart beside the chat's text, not a full page
# Plotly cannot follow the page's light or dark theme: charts are drawn on the page's own background, in a grey
# that reads on both (Plotly's defaults are a white card with a light blue plot area, glaring in the dark theme).
INK = "#8b93a1"
GRID = "rgba(139, 147, 161, 0.25)"
CLEAR = "rgba(0, 0, 0, 0)"
DAY_MS = 86_400_000  # a tick a day, while the days shown are few enough to label each
DAY_TICKS_UP_TO = 14


async def show_dashboard(user: str, language: str, contender: str | None = None) -> None:
    """Post the dashboard for `user` (everyone's data if an admin), narrowed to `contender` if given."""
    runtime = serving()
    everyone = user in runtime.settings.admins
    scope = await scope_for(runtime.sessions, user, everyone, contender)
    data = await dashboard(runtime.sessions, runtime.profiles.adapters, runtime.settings, scope)
    whose = text("dashboard_everyone" if everyone else "dashboard_yours", language)
    narrowed = text("dashboard_only", language, contender=contender) if contender else ""
    board = data.board
    summary = text("dashboard_summary", language, counted=board.counted, stored=board.stored)
    title = text("dashboard_title", language, time=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    message = without_thumbs(
        cl.Message(
            content=f"**{title}** ({whose}{narrowed})\n\n{summary}",
            actions=filter_actions(data.contenders, contender, language),
        )
    )
    await send_with_files(message, [*charts(data, language), *csv_files(data)])
    # Counting reads every conversation in scope (seconds for everyone's on a large database): said first.
    counting = await without_thumbs(cl.Message(content=text("dashboard_counting", language))).send()
    sizes = await dataset_sizes(runtime.engine, scope)
    await counting.remove()
    elements = [
        plotly("dataset", dataset_chart(sizes, language), language),
        csv_file("dataset.csv", dataset_csv(sizes)),
    ]
    await send_with_files(without_thumbs(cl.Message(content=text("dashboard_dataset", language))), elements)


async def send_with_files(message: cl.Message, elements: list[cl.Plotly | cl.File]) -> None:
    """Send `message`, then its elements once each is stored: the page loads a chart as soon as it is shown,
    from Loupe's route, which serves only what is stored (Chainlit would store it in the background)."""
    await message.send()
    data_layer = serving().data_layer
    await data_layer.settle_step(message.id)  # the message and its thread are stored
    for element in elements:
        element.for_id = message.id
        await data_layer.create_element(element)
        await element.send(for_id=message.id, persist=False)


def filter_actions(contenders: list[str], chosen: str | None, language: str) -> list[cl.Action]:
    """One button per contender in scope, and one for all of them; the current choice is ticked."""
    choices = [(EVERY_CONTENDER, text("dashboard_all", language)), *((name, name) for name in contenders)]
    return [
        cl.Action(
            name=FILTER,
            payload={"contender": name},
            label=f"✓ {label}" if (name or None) == chosen else label,
        )
        for name, label in choices
    ]


# Charts -------------------------------------------------------------------------------------------


def charts(data: Dashboard, language: str) -> list[cl.Plotly]:
    figures = {
        "leaderboard": leaderboard_chart(data, language),
        "feedback": feedback_chart(data, language),
        "reasons": reasons_chart(data, language),
        "battles": battles_chart(data, language),
    }
    return [plotly(name, figure, language) for name, figure in figures.items()]


def plotly(name: str, figure: go.Figure, language: str) -> cl.Plotly:
    """A chart the page loads from Loupe's own route (chat/ui/routes.py `stored_file_url`); one with nothing to
    draw says so, instead of showing bare axes."""
    if not any(len(trace.x or ()) for trace in figure.data):
        figure.update_xaxes(visible=False)
        figure.update_yaxes(visible=False)
        figure.add_annotation(text=text("chart_empty", language), showarrow=False, font={"size": 15})
    element = cl.Plotly(name=name, figure=figure, display="inline")
    element.url = stored_file_url(element.content)
    return element


def csv_file(name: str, table: str) -> cl.File:
    content = table.encode()
    return cl.File(name=name, content=content, url=stored_file_url(content), mime="text/csv", display="inline")


def _figure(title: str, **layout: object) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(
        title=title,
        height=CHART_HEIGHT,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        paper_bgcolor=CLEAR,
        plot_bgcolor=CLEAR,
        font={"color": INK},
    )
    figure.update_xaxes(gridcolor=GRID, zerolinecolor=GRID)
    figure.update_yaxes(gridcolor=GRID, zerolinecolor=GRID)
    figure.update_layout(**layout)
    return figure


def leaderboard_chart(data: Dashboard, language: str) -> go.Figure:
    """Each contender's style-controlled score with its 95% interval as a bar, the plain score beside it."""
    rows = list(reversed(data.board.standings))  # Plotly draws the first row at the bottom
    labels = [f"{row.contender} ({row.flags})" if row.flags else row.contender for row in rows]
    figure = _figure(text("chart_leaderboard", language), xaxis_title=text("chart_score", language))
    for name, interval_of, symbol in (
        (text("chart_style_controlled", language), lambda row: row.score, "circle"),
        (text("chart_plain", language), lambda row: row.plain, "circle-open"),
    ):
        intervals = [interval_of(row) for row in rows]
        figure.add_trace(
            go.Scatter(
                name=name,
                x=[i.score for i in intervals],
                y=labels,
                mode="markers",
                marker={"symbol": symbol, "size": 10},
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": [i.high - i.score for i in intervals],
                    "arrayminus": [i.score - i.low for i in intervals],
                },
            )
        )
    return figure


def feedback_chart(data: Dashboard, language: str) -> go.Figure:
    """The share of thumbs up per day, a line per contender."""
    figure = _figure(
        text("chart_feedback", language), yaxis={"title": text("chart_up_share", language), "range": [0, 1]}
    )
    for contender in sorted({day.contender for day in data.feedback}):
        days = [day for day in data.feedback if day.contender == contender]
        figure.add_trace(
            go.Scatter(
                name=contender,
                x=[day.day.isoformat() for day in days],
                y=[day.up_share for day in days],
                customdata=[[day.up, day.down] for day in days],
                hovertemplate="%{x}: %{y:.0%} (%{customdata[0]} up, %{customdata[1]} down)",
                mode="lines+markers",
            )
        )
    return by_day(figure, [day.day for day in data.feedback])


def by_day(figure: go.Figure, days: list[date]) -> go.Figure:
    """An x axis of whole days, a day either side of the data: left to itself, Plotly zooms one day's points
    to a millisecond wide window labelled with clock times."""
    if days:
        first, last = min(days) - timedelta(days=1), max(days) + timedelta(days=1)
        wide = (last - first).days > DAY_TICKS_UP_TO
        figure.update_xaxes(
            type="date",
            tickformat="%Y-%m-%d",
            range=[first.isoformat(), last.isoformat()],
            dtick=None if wide else DAY_MS,
        )
    return figure


def reasons_chart(data: Dashboard, language: str) -> go.Figure:
    figure = _figure(text("chart_reasons", language), barmode="group")
    for contender, counts in data.reasons.items():
        codes = sorted(counts)
        figure.add_trace(
            go.Bar(name=contender, x=[reason_label(c, language) for c in codes], y=[counts[c] for c in codes])
        )
    return figure


def battles_chart(data: Dashboard, language: str) -> go.Figure:
    figure = _figure(text("chart_battles", language), barmode="overlay")
    days = [day.isoformat() for day, _, _ in data.battles_per_day]
    for name, column in ((text("chart_stored", language), 1), (text("chart_counted", language), 2)):
        figure.add_trace(go.Bar(name=name, x=days, y=[row[column] for row in data.battles_per_day]))
    return by_day(figure, [day for day, _, _ in data.battles_per_day])


def dataset_chart(sizes: Tally, language: str) -> go.Figure:
    figure = _figure(text("chart_dataset", language), barmode="group")
    for column, counts in sizes.items():
        rules = sorted(counts)
        figure.add_trace(go.Bar(name=column, x=rules, y=[counts[rule] for rule in rules]))
    return figure


# CSV ----------------------------------------------------------------------------------------------


def csv_files(data: Dashboard) -> list[cl.File]:
    """Each view's numbers as a CSV file under the dashboard."""
    tables = {
        "leaderboard.csv": as_csv(
            [
                "rank",
                "contender",
                "score",
                "low",
                "high",
                "plain",
                "plain_low",
                "plain_high",
                "battles",
                "wins",
                "ties",
                "losses",
                "provisional",
                "retired",
            ],
            [
                [
                    row.rank,
                    row.contender,
                    *_interval(row.score),
                    *_interval(row.plain),
                    row.battles,
                    row.wins,
                    row.ties,
                    row.losses,
                    row.provisional,
                    row.retired,
                ]
                for row in data.board.standings
            ],
        ),
        "feedback.csv": as_csv(
            ["day", "contender", "up", "down", "up_share"],
            [[d.day.isoformat(), d.contender, d.up, d.down, round(d.up_share, 4)] for d in data.feedback],
        ),
        "reasons.csv": as_csv(
            ["contender", "reason", "answers"],
            [[name, code, count] for name, counts in data.reasons.items() for code, count in sorted(counts.items())],
        ),
        "battles.csv": as_csv(
            ["day", "stored", "counted"],
            [[day.isoformat(), stored, kept] for day, stored, kept in data.battles_per_day],
        ),
    }
    return [csv_file(name, table) for name, table in tables.items()]


def dataset_csv(sizes: Tally) -> str:
    return as_csv(
        ["adapter", "rule", "rows"],
        [[column, rule, count] for column, counts in sizes.items() for rule, count in sorted(counts.items())],
    )


def _interval(interval: Interval) -> list[float]:
    return [round(interval.score, 1), round(interval.low, 1), round(interval.high, 1)]
