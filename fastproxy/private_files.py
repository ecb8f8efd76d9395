"""Files only the proxy's user can touch: capture and replay-summary output.

Output directories are opened once (O_DIRECTORY|O_NOFOLLOW) and every file is created relative
to that descriptor with O_CREAT|O_EXCL|O_NOFOLLOW: a symlink planted under a file's name is never
followed, an existing file is never overwritten, and a directory swapped for a symlink mid-way
does not redirect the writes. A directory other users may write into (or that belongs to another
user) is refused: whoever can write there can plant those links and files in the first place.
"""
from __future__ import annotations

import os
import pwd

from fastproxy.errors import ConfigError, JobError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def check_output_path(path: str, field: str) -> str:
    """The path as given if it may name an output directory; ConfigError naming `field` otherwise.

    Relative paths are refused: they would resolve against the proxy's working directory, which
    is not the caller's.
    """
    if "\0" in path:
        raise ConfigError(f"{field}: the path contains a NUL byte")
    if not os.path.isabs(path):
        raise ConfigError(f"{field}: must be an absolute path, got {path!r} (a relative path would be "
                          f"resolved against the proxy's working directory)")
    return os.path.normpath(path)


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_private_dir(st: os.stat_result, path: str, field: str) -> None:
    """JobError (naming `field`) unless the directory `st` describes belongs to us and no one else
    may write into it."""
    euid = os.geteuid()
    if st.st_uid != euid:
        raise JobError(f"{field}: {path} belongs to {_user(st.st_uid)}, not to the proxy's user {_user(euid)}: "
                       f"its owner could plant links or files in it; use a directory of the proxy's user")
    if st.st_mode & 0o022:
        who = " and ".join(w for bit, w in ((0o020, "its group"), (0o002, "all users")) if st.st_mode & bit)
        raise JobError(f"{field}: {path} is writable by {who} (mode {st.st_mode & 0o7777:04o}): they could plant "
                       f"links or files in it; `chmod go-w` it or use a private directory")


def open_private_dir(path: str, field: str, *, create: bool) -> int:
    """A descriptor of directory `path`, created mode 0700 (with its parents) if missing.

    JobError if it is a symlink, not ours, or writable by others; OSError (with the path) if the
    OS refuses. The caller closes the descriptor.
    """
    created = False
    if create:
        parent = os.path.dirname(path)
        if parent and not os.path.exists(parent):
            os.makedirs(parent, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
            created = True
        except FileExistsError:
            pass
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as e:
        if os.path.islink(path):
            raise JobError(f"{field}: {path} is a symbolic link: give the real directory's path") from None
        e.filename = e.filename or path
        raise
    try:
        if created:
            os.fchmod(fd, 0o700)  # mkdir's mode is reduced by the umask
        check_private_dir(os.fstat(fd), path, field)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private_file(dir_fd: int, name: str) -> int:
    """A new file `name` (mode 0600) in the directory dir_fd, opened for writing.

    FileExistsError if anything is already there under that name, a symlink included.
    """
    return os.open(name, _FILE_FLAGS, 0o600, dir_fd=dir_fd)


def write_all(fd: int, data) -> None:
    """os.write until every byte is written (a write may be short near a full disk)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
