"""The inbox's few static files (one script, one stylesheet), served from memory."""

from hashlib import sha256
from importlib import resources

from starlette.responses import PlainTextResponse, Response

_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


class InboxAssets:
    """Read once at start; each URL carries a hash of the content, so browsers may cache freely."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, str]] = {}
        self.versions: dict[str, str] = {}
        folder = resources.files("broker.channels.web") / "static"
        for entry in folder.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if suffix in _STATIC_TYPES:
                content = entry.read_bytes()
                self._files[entry.name] = (content, _STATIC_TYPES[suffix])
                self.versions[entry.name] = sha256(content).hexdigest()[:12]

    def url(self, name: str) -> str:
        return f"/static/{name}?v={self.versions[name]}"

    def response(self, name: str) -> Response:
        found = self._files.get(name)
        if found is None:
            return PlainTextResponse("not found", status_code=404)
        content, media_type = found
        # The URL changes with the content, so a browser may keep a copy as long as it likes.
        return Response(content, media_type=media_type, headers={"Cache-Control": "public, max-age=31536000"})
