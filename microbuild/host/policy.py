"""What a host lets a sidecar reach of the host: exposed paths, another root filesystem, the
host's network.

These come from a repository's `microbuild.toml` (which the repository's author, or an agent,
wrote) or from any API client holding the token, so neither decides. The host does: its
allow-list comes from `microbuild serve` flags and from the user's own configuration
(`~/.config/microbuild/config.toml`, `[host]`), never from a repository. A client of the local
Unix socket (the user, by SO_PEERCRED) may grant one request more with `--allow-host-access`;
a TCP client never can. Whatever the allow-list says, the state dir, the token and home
directories are never exposed, nor any directory holding one of them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from microbuild.config import CheckConfig, SidecarConfig

__all__ = ["GRANT_HEADER", "HostPolicy", "PolicyRefused", "user_config_path", "user_policy"]

GRANT_HEADER = "X-Microbuild-Host-Access"
"""Set to `granted` by `--allow-host-access`; honoured on the Unix socket only."""
USER_CONFIG_HINT = "allow it in ~/.config/microbuild/config.toml [host]"


class PolicyRefused(Exception):
    """A sidecar asked for host access this host does not allow."""


@dataclass(frozen=True)
class HostPolicy:
    allow_expose: tuple[Path, ...] = ()
    """Host paths (and what is under them) a sidecar may have exposed read-only."""
    allow_rootfs: tuple[Path, ...] = ()
    allow_host_network: bool = False
    forbidden: tuple[Path, ...] = field(default_factory=tuple)
    """Never exposed, nor any directory above one: the state dir, the token, home dirs."""

    @classmethod
    def for_host(
        cls,
        state_dir: Path,
        *,
        allow_expose: Iterable[Path] = (),
        allow_rootfs: Iterable[Path] = (),
        allow_host_network: bool = False,
        token_file: Path | None = None,
    ) -> HostPolicy:
        forbidden = [state_dir, Path.home(), Path("/root"), Path("/home")]
        if token_file is not None:
            forbidden.append(token_file)
        return cls(
            allow_expose=tuple(_real(p) for p in allow_expose),
            allow_rootfs=tuple(_real(p) for p in allow_rootfs),
            allow_host_network=allow_host_network,
            forbidden=tuple(_real(p) for p in forbidden),
        )

    def merged(self, other: HostPolicy) -> HostPolicy:
        return HostPolicy(
            allow_expose=(*self.allow_expose, *other.allow_expose),
            allow_rootfs=(*self.allow_rootfs, *other.allow_rootfs),
            allow_host_network=self.allow_host_network or other.allow_host_network,
            forbidden=(*self.forbidden, *other.forbidden),
        )

    def check_sidecar(self, settings: SidecarConfig, *, granted: bool = False) -> None:
        """Raise `PolicyRefused` (one line: what, why, how to allow it) unless allowed."""
        for raw in settings.expose:
            path = _usable(raw, "expose")
            near = next((f for f in self.forbidden if _overlaps(path, f)), None)
            if near is not None:
                raise PolicyRefused(
                    f"expose {raw}: refused, it is or holds {near} (the state dir, the token "
                    "or a home directory are never exposed)"
                )
            if not granted and not any(_under(path, a) for a in self.allow_expose):
                raise PolicyRefused(
                    f"expose {raw}: this host does not allow it; a repository's config cannot "
                    f"grant host paths: {USER_CONFIG_HINT} (allow_expose), or run with "
                    "--allow-host-access (local host only)"
                )
        if settings.rootfs is not None:
            path = _usable(settings.rootfs, "rootfs")
            if not granted and not any(_under(path, a) for a in self.allow_rootfs):
                raise PolicyRefused(
                    f"rootfs {settings.rootfs}: this host does not allow it: "
                    f"{USER_CONFIG_HINT} (allow_rootfs), or run with --allow-host-access"
                )
        if settings.network == "host":
            self.check_network("the sidecar", granted=granted)

    def check_checks(self, checks: Sequence[CheckConfig], *, granted: bool = False) -> None:
        for check in checks:
            if check.network == "host":
                self.check_network(f"check {check.name}", granted=granted)

    def check_network(self, what: str, *, granted: bool = False) -> None:
        if not granted and not self.allow_host_network:
            raise PolicyRefused(
                f"{what} asks for the host's network; this host does not allow it: "
                f"{USER_CONFIG_HINT} (allow_host_network = true), or run with "
                "--allow-host-access (local host only)"
            )


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "microbuild" / "config.toml"


def user_policy(path: Path | None = None) -> HostPolicy:
    """The allow-list of the user's own configuration (`[host]`); empty when there is none."""
    path = path or user_config_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return HostPolicy()
    except (OSError, ValueError) as exc:
        raise PolicyRefused(f"{path}: cannot be read ({exc}); fix or remove it") from exc
    table = data.get("host", {})
    if not isinstance(table, dict):
        raise PolicyRefused(f"{path}: [host] must be a table")

    def paths(key: str) -> tuple[Path, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PolicyRefused(f"{path}: [host] {key} must be a list of absolute paths")
        if not all(os.path.isabs(v) for v in value):
            raise PolicyRefused(f"{path}: [host] {key} must be a list of absolute paths")
        return tuple(_real(Path(v)) for v in value)

    network = table.get("allow_host_network", False)
    if not isinstance(network, bool):
        raise PolicyRefused(f"{path}: [host] allow_host_network must be true or false")
    return HostPolicy(
        allow_expose=paths("allow_expose"),
        allow_rootfs=paths("allow_rootfs"),
        allow_host_network=network,
    )


def _usable(raw: str, what: str) -> Path:
    try:
        os.fsencode(raw)
        if "\0" in raw:
            raise ValueError("a NUL byte")
        return _real(Path(raw))
    except (ValueError, UnicodeError, OSError) as exc:
        raise PolicyRefused(f"{what} {raw!r}: not a usable path ({exc})") from None


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _under(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def _overlaps(path: Path, forbidden: Path) -> bool:
    """Whether exposing `path` shows `forbidden`: it is it, under it, or above it."""
    return _under(path, forbidden) or _under(forbidden, path)
