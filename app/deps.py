"""The service's state and the dependencies that hand out its finished resources.

The lifespan (:func:`app.main.create_app`) fills :class:`ServiceState` once the engine is built;
until then, and if building it failed, :func:`get_engine` answers with :class:`NotReady` (a 503),
so a route only ever sees a complete engine.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from app.engine import Engine, NotReady
from app.schemas import Limits
from app.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    limits: Limits
    engine: Engine | None = None  # None while loading, or when loading failed (load_error says why)
    load_error: str | None = None
    loading: str | None = None  # how far the slow part of loading is (Engine.build's status)
    stopping: threading.Event = field(default_factory=threading.Event)  # set at shutdown

    def ready_engine(self) -> Engine:
        """The engine, or :class:`NotReady` (a 503) while there is none."""
        if self.engine is None:
            step = f" ({self.loading})" if self.loading else ""
            raise NotReady(self.load_error or f"the model and the index are still loading{step}")
        if self.engine.problem is not None:
            raise NotReady(self.engine.problem)
        return self.engine

    def loading_step(self, step: str) -> None:
        self.loading = step


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


# `async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread
# hand-off per request for what is an attribute lookup.
async def service_state(request: Request) -> ServiceState:
    return _state(request)


async def get_settings(request: Request) -> Settings:
    return _state(request).settings


async def get_engine(request: Request) -> Engine:
    return _state(request).ready_engine()


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[ServiceState, Depends(service_state)]
