"""Offline detection for model downloads: fail in seconds, not after a minute of retries.

Without network, huggingface_hub retries each request and logs a warning per attempt before
the (good) error arrives. A short connection probe to the hub decides up front; when it fails,
offline mode is switched on, so cached weights still load and missing ones fail at once.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 2.0


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds (DNS included)."""
    url = urlsplit(os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo ignores socket timeouts
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def go_offline_if_unreachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Switch huggingface_hub to offline mode when the hub cannot be reached; True when it did.

    An explicit HF_HUB_OFFLINE (either value) is the user's choice and is left alone.
    """
    if os.environ.get("HF_HUB_OFFLINE") is not None or os.environ.get("TRANSFORMERS_OFFLINE") is not None:
        return False
    if hub_reachable(timeout):
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: it read the environment at import time
        constants.HF_HUB_OFFLINE = True
    return True
