"""What every command shares: the state dir, the project, and a lazily opened manager."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from microbuild.config import Project
    from microbuild.host.manager import SidecarManager


class AppContext:
    def __init__(self, state_dir: Path | None, project_dir: Path | None) -> None:
        self.state_dir = state_dir
        self.project_dir = project_dir
        self._manager: SidecarManager | None = None

    @property
    def manager(self) -> SidecarManager:
        if self._manager is None:
            from microbuild.host.manager import SidecarManager

            self._manager = SidecarManager(self.state_dir)
        return self._manager

    def project(self) -> Project:
        from microbuild.config import find_project

        return find_project((self.project_dir or Path.cwd()).absolute())

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
