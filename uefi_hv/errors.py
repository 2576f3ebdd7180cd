"""Errors a person can act on.

Every step raises a subclass of `UserError` for a problem with its input or
environment; the CLI prints `str(error)` (no traceback) and exits with
`error.exit_status`.  Exit statuses, kept the same for every command:
    1  the input is wrong (a spec with an error, an image that does not boot,
       a run that did not end the way it should)
    2  the command was misused (bad arguments, missing file)
    3  the environment lacks something (a tool, a package, firmware)
"""

import shutil


class UserError(Exception):
    exit_status = 1


class UsageError(UserError):
    exit_status = 2



class MissingEnvironment(UserError):
    """Something the machine should have is missing; the message says how to
    get it."""

    exit_status = 3


class MissingTool(MissingEnvironment):
    """A program or file from a Debian package is missing; names the package."""

    def __init__(self, what: str, package: str):
        super().__init__(
            f"error: {what} not found; install the Debian package '{package}' "
            f"(as root: apt-get install {package}, or run 'make setup')"
        )
        self.package = package


def require_program(program: str, package: str) -> str:
    """The path of `program`, or MissingTool naming the Debian `package`."""
    found = shutil.which(program)
    if found is None:
        raise MissingTool(f"the program '{program}'", package)
    return found
