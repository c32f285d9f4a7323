"""The process's shared parts, built once from Settings: engine, sessions, keys."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from connector import redact
from connector.config import Settings
from connector.crypto import keyring
from connector.store.db import make_engine, make_sessionmaker


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        keyring.install(settings.encryption_keys)
        redact.install()
        engine = make_engine(
            settings.database_url, statement_timeout=settings.db_statement_timeout
        )
        return cls(settings=settings, engine=engine, sessions=make_sessionmaker(engine))

    def close(self) -> None:
        self.engine.dispose()
