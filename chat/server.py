"""Loupe's web application, built by a factory: Loupe's routes and guards, with Chainlit mounted in it.

Chainlit's cookbook pattern (its custom-frontend example): Loupe owns the FastAPI app that uvicorn
serves, puts its own routes, middleware and API on it, and mounts Chainlit's app at `/` behind them.
A request reaches Chainlit only if none of Loupe's routes takes it, so Loupe's routes in front of some of
Chainlit's own (a rating, a login, an upload: chat/ui/routes.py) win without editing Chainlit's route list.
Mounted apps do not run their own lifespan, so Loupe's runs Chainlit's: start-up (migrate, load the model:
chat/app.py) and shutdown happen as when Chainlit served alone.
"""

from __future__ import annotations

from pathlib import Path

import chainlit.server
from chainlit.config import config as chainlit_config
from chainlit.utils import mount_chainlit
from fastapi import FastAPI

from chat.api.openai import api_routes
from chat.settings import Settings
from chat.ui.runtime import build_runtime, install

APP = Path(__file__).resolve().parent / "app.py"  # what Chainlit loads: the handlers


def create_app(settings: Settings) -> FastAPI:
    """A Loupe server for `settings`: nothing is loaded or connected until it starts serving.

    Raises what building the runtime raises: a setting out of range, a database URL that cannot be read,
    the login secret, a folder that cannot be written (`python -m chat serve` says which and stops).
    """
    runtime = build_runtime(settings)
    # Chainlit's own files (.chainlit/, public/, chainlit.md, uploads in .files/) are found in the working
    # directory; a server never opens a browser.
    chainlit_config.run.headless = True
    app = FastAPI(title="Loupe", lifespan=lambda _: chainlit.server.lifespan(chainlit.server.app))
    app.state.runtime = runtime
    install(runtime, app)
    api_routes(app, runtime)
    mount_chainlit(app, str(APP), path="/")
    return app
