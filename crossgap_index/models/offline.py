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
from pathlib import Path
from urllib.parse import urlsplit

from crossgap_index.errors import ModelUnavailableError
from crossgap_index.models._registry import bundled_names

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


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloads (its own precedence: HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME)."""
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ.get("HF_HUB_CACHE") or os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface" / "hub"


def any_cached_weights() -> bool:
    """Whether any open_clip weights were ever downloaded here (hub cache, or open_clip's own URL cache)."""
    cached = hub_cache().glob("models--*/snapshots/*/open_clip_*")
    clip_cache = Path("~/.cache/clip").expanduser()
    return next(cached, None) is not None or (clip_cache.is_dir() and any(clip_cache.iterdir()))


def refuse_download_offline(canonical: str) -> None:
    """Fail at once, before torch loads, when the default model must be downloaded and cannot be.

    The rule is deliberately conservative: offline (HF_HUB_OFFLINE set, or the hub unreachable) *and* no
    open_clip weights cached at all. With some cached weights, open_clip decides (cached ones load)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not offline:
        offline = go_offline_if_unreachable()
    if not offline or any_cached_weights():
        return
    raise ModelUnavailableError(
        f"cannot load model '{canonical}' (the default when no --model is given): it is a download, the Hugging "
        f"Face hub cannot be reached from here and no weights are cached ({hub_cache()}). Offline options: a "
        f"bundled model (--model {' or --model '.join(bundled_names())}) or local weights "
        "(--model ARCH::/path/to/weights.safetensors, or --model /path/to/open_clip-folder)"
    )
