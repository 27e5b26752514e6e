"""The sync endpoint: a working tree reaches a sidecar as a patch (or, as a fallback, an archive).

Kept apart from app.py so the resource routes stay readable; mounted by `create_app` (which
imports this module when the app is built, after app.py itself is loaded).
"""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Query, Request

from microbuild.host.app import IdPath, Sidecar
from microbuild.host.manager import SidecarManager

Tree = Annotated[str, Query(pattern=r"^[0-9a-f]{40,64}$")]


def router(manager: SidecarManager) -> APIRouter:
    routes = APIRouter(tags=["sidecars"])

    @routes.post("/v1/sidecars/{sidecar_id}/sync", response_model=Sidecar)
    async def sync(
        sidecar_id: IdPath,
        request: Request,
        to: Tree,
        format: Literal["patch", "tar"] = "patch",
        from_: Annotated[str | None, Query(alias="from", pattern=r"^[0-9a-f]{40,64}$")] = None,
        reset: bool = False,
    ) -> Sidecar:
        """Apply `git diff --binary FROM TO` (format=patch) to the sidecar's workspace; with
        `reset`, after a fresh layer (from its snapshot's source tree). format=tar: a fresh
        layer, the snapshot's source files removed, the archive of TO unpacked. 409
        `tree_mismatch` when the sidecar does not hold FROM, 409 `apply_failed` when the patch
        does not apply (nothing changed)."""
        payload = await request.body()
        record = await anyio.to_thread.run_sync(
            lambda: manager.sync(
                sidecar_id,
                to_tree=to,
                payload=payload,
                kind=format,
                from_tree=from_,
                reset=reset,
            )
        )
        return Sidecar.of(record)

    return routes
