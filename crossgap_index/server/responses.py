"""JSON responses that survive any file name: a path that is not valid UTF-8 (a Linux file name is bytes)
is held as a str with lone surrogates (Python's surrogateescape), which UTF-8 cannot encode."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse


class SafeJSONResponse(JSONResponse):
    """UTF-8 JSON as usual; when the content holds lone surrogates, the same JSON with every non-ASCII
    character written as a ``\\uXXXX`` escape. That is still valid JSON, and lossless: a Python client
    gets back the same str, and ``os.fsencode(path)`` the file name's exact bytes."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")
