"""FastAPI dependencies: the engine and the settings of the running app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.engine import Engine
from app.settings import Settings


# `async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread
# hand-off per request for what is an attribute lookup.
async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
