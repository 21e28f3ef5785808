"""The planner's refusal: the spec asks for something ffmpeg cannot do (job reason InvalidSpec)."""

from __future__ import annotations


class InvalidSpec(ValueError):
    """The spec asks for something ffmpeg cannot do on this accelerator (reason InvalidSpec)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
