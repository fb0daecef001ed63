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
