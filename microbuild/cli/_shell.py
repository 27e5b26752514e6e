"""The terminal end of `microbuild sidecar shell`: raw mode, a WebSocket, and resizes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import termios
import threading
import tty
from types import FrameType

from microbuild.client import Client, HostError


def run_shell(client: Client, sidecar_id: str) -> int:
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect, unix_connect

    client.get_sidecar(sidecar_id)  # a clear error before the terminal changes mode
    cols, rows = shutil.get_terminal_size()
    url = client.shell_url(sidecar_id, rows, cols)
    headers = {"Authorization": f"Bearer {client.token}"} if client.token else None
    try:
        if client.uds:
            ws = unix_connect(client.uds, url, additional_headers=headers)
        else:
            ssl_context = None
            if url.startswith("wss://"):
                import ssl

                ssl_context = ssl.create_default_context(
                    cafile=client.verify if isinstance(client.verify, str) else None
                )
            ws = connect(url, additional_headers=headers, ssl=ssl_context)
    except (InvalidStatus, OSError) as exc:
        raise HostError(0, "shell_failed", f"cannot open a shell: {exc}") from exc
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    exit_code = 0

    def on_resize(_sig: int, _frame: FrameType | None) -> None:
        c, r = shutil.get_terminal_size()
        with contextlib.suppress(Exception):
            ws.send(json.dumps({"resize": [r, c]}))

    def keyboard() -> None:
        with contextlib.suppress(OSError, ConnectionClosed):
            while data := os.read(stdin, 4096):
                ws.send(data)

    previous = signal.signal(signal.SIGWINCH, on_resize)
    try:
        if interactive:
            tty.setraw(stdin)
        threading.Thread(target=keyboard, daemon=True).start()
        for message in ws:
            if isinstance(message, bytes):
                os.write(sys.stdout.fileno(), message)
            else:
                with contextlib.suppress(ValueError, KeyError):
                    exit_code = int(json.loads(message)["exit"])
    except ConnectionClosed:
        pass
    finally:
        signal.signal(signal.SIGWINCH, previous)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        ws.close()
    return exit_code
