"""What every command shares: the state dir, the project, and a lazily opened host client."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from microbuild.client import Client
    from microbuild.config import Project


class AppContext:
    def __init__(
        self,
        state_dir: Path | None,
        project_dir: Path | None,
        host: str | None,
        allow_host_access: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.project_dir = project_dir
        self.host = host
        self.allow_host_access = allow_host_access
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        """The host to talk to: --host / MICROBUILD_HOST, else the local one (started once)."""
        if self._client is None:
            from microbuild.client import connect

            self._client = connect(
                self.host, self.state_dir, grant_host_access=self.allow_host_access
            )
        return self._client

    def project(self) -> Project:
        from microbuild.config import find_project

        return find_project((self.project_dir or Path.cwd()).absolute())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
