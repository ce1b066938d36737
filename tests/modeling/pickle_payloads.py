"""Stand-ins for malicious checkpoints: objects whose unpickling would run code."""

from __future__ import annotations

from pathlib import Path


def _leave_marker(path: str) -> None:
    Path(path).write_text("executed")


class _Payload:
    """Unpickling this calls ``_leave_marker``: a stand-in for malicious code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_leave_marker, (self.marker,))
