"""Bad requests answered with a 4xx status and a message that says what was wrong.

Why: MONAI Label turns any exception of a task into "500 Internal Server Error" with no detail, so a
client (Slicer, a script) cannot tell a corrupt upload from a server fault. Errors of the request are
mapped here; anything else stays a 500 and the server keeps serving.
"""

from __future__ import annotations

from fastapi import HTTPException

# Exception class names of the engine (scripts.data.cxr_io.CXRInputError) matched by name: the bundle's
# ``scripts`` modules are reloaded per request by MONAI Label, so class identity is not stable. PIL's
# DecompressionBombError (an Exception, not an OSError) is what the engine's PIL fallback raises for a PNG/JPEG
# declaring billions of pixels; InputTooLarge is this app's own screen of the declared size (lib/infer.py).
INPUT_ERRORS = ("CXRInputError", "InputTooLarge", "DecompressionBombError")


class BadRequestParameter(ValueError):
    """A request parameter out of range (e.g. ``quality_threshold``): answered 400 with the message."""


class InputTooLarge(ValueError):
    """An image whose header declares more pixels than the engine accepts: answered 422 before any pixel is decoded."""


def unknown_model(model: str | None, available: list[str]) -> HTTPException:
    return HTTPException(status_code=404, detail=f"unknown model {model!r}; available models: {sorted(available)}")


def unknown_image(image: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"no study {image!r} in the datastore")


def bad_extension(name: str, supported: tuple[str, ...], what: str = "image") -> HTTPException:
    return HTTPException(status_code=400,
                         detail=f"unsupported {what} type {name!r}; supported: {', '.join(supported)}")


def input_error(exc: BaseException, upload: str | None = None) -> HTTPException | None:
    """The 4xx for an error found anywhere in the exception chain, else None (a server fault: 500).

    422 for an unusable input (corrupt, empty, 3-D...), 400 for a result type the writer cannot make.

    ``upload``: the server's temporary copy of an uploaded file, named "uploaded image" in the message.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, HTTPException):
            return current
        if type(current).__name__ in ("UnsupportedResult", "BadRequestParameter"):
            return HTTPException(status_code=400, detail=str(current))
        if type(current).__name__ in INPUT_ERRORS:
            message = str(current)
            if upload:
                message = message.replace(f"'{upload}'", "the upload").replace(upload, "uploaded image")
            return HTTPException(status_code=422, detail=message)
        current = current.__cause__ or current.__context__
    return None



__all__ = ["BadRequestParameter", "InputTooLarge", "bad_extension", "input_error", "unknown_image", "unknown_model"]
