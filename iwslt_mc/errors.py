"""Errors a user can cause. The CLI prints them as one line and exits non-zero, no traceback."""


class UserError(Exception):
    """A problem with the user's input (file, option, data). Message must name the file/option and the problem."""

    exit_code = 2


class InputFileError(UserError):
    """A problem inside an input file: ``InputFileError(path, problem)`` renders as ``path: problem``."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# Operating-system errors that mean the disk (or the user's quota) is full.
_DISK_FULL_ERRNOS = (28, 122)  # ENOSPC, EDQUOT (Linux numbers; errno names them below where known)
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


def disk_full(exc: BaseException) -> tuple[bool, str | None]:
    """Whether ``exc`` (or an exception it was raised from) is a full disk, and the path it names if any.

    Libraries do not all raise OSError for it: safetensors and torch.save raise their own errors whose text
    says "No space left on device" / "os error 28" (then no path is known)."""
    import errno

    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", 122), *_DISK_FULL_ERRNOS}
    seen: set[int] = set()
    e: BaseException | None = exc
    found, path = False, None
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in codes:
            found = True
            path = path or (str(e.filename) if e.filename is not None else None)
        elif any(t in str(e).lower() for t in _DISK_FULL_TEXT):
            found = True
        e = e.__cause__ or e.__context__
    return found, path
