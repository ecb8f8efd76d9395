"""Where `fastproxy replay` and `fastproxy traffic replay` get the replay user's password, and keeping
it out of the process list.

In this order: ``--password`` (then overwritten in the process's own argument memory, which is
what ``ps`` and ``/proc/PID/cmdline`` show, as the ``mariadb`` client does), ``--password-file``,
the ``FASTPROXY_PASSWORD`` environment variable, a prompt. Any user on the machine can read a
process's command line, while its environment and a 0600 file are its owner's only.
"""
from __future__ import annotations

import ctypes
import os
import stat
import sys

import click

ENV_VAR = "FASTPROXY_PASSWORD"
# /proc/PID/stat fields 48 and 49 (arg_start, arg_end; proc(5)), counted from field 3, the first
# after the parenthesised command name
_ARG_START, _ARG_END = 48 - 3, 49 - 3


def password_options(f):
    """The --password and --password-file options of a command."""
    f = click.option("--password-file", type=click.Path(dir_okay=False), default=None,
                     help="read the password from this file (readable by its owner only; one trailing "
                          "newline is dropped)")(f)
    f = click.option("--password", default=None,
                     help=f"the password (hidden from ps once read; safer: --password-file, ${ENV_VAR}, "
                          "or the prompt you get without any of them)")(f)
    return f


def resolve_password(password: str | None, password_file: str | None) -> str:
    if password is not None and password_file is not None:
        raise click.UsageError("give --password or --password-file, not both")
    if password is not None:
        scrub_argv(password)
        return password
    if password_file is not None:
        return read_password_file(password_file)
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return env
    return click.prompt("Password", hide_input=True, default="", show_default=False)


def read_password_file(path: str) -> str:
    """The password in ``path``; refused when others may read or change the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise click.BadParameter(f"cannot open {path}: {e.strerror}", param_hint="--password-file") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise click.BadParameter(f"{path} is not a regular file", param_hint="--password-file")
        if st.st_mode & 0o077:
            raise click.BadParameter(f"{path} can be read or changed by others (mode {stat.S_IMODE(st.st_mode):o}); "
                                     f"chmod 600 it", param_hint="--password-file")
        data = f.read()
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path} is not UTF-8", param_hint="--password-file") from None


def scrub_argv(secret: str) -> int:
    """Overwrite ``secret`` where it is the value of ``--password`` in this process's command line
    (the memory ``ps`` reads) and in ``sys.argv``; returns how many places were overwritten."""
    if not secret:
        return 0
    value = os.fsencode(secret)
    changed = 0
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[_ARG_START]), int(fields[_ARG_END])
    except (OSError, IndexError, ValueError):
        start = end = 0     # not Linux: only sys.argv below
    if 0 < start < end:
        args = ctypes.string_at(start, end - start).split(b"\0")
        offset = 0
        for i, arg in enumerate(args):
            at = -1
            if arg == b"--password=" + value:
                at = offset + len(b"--password=")
            elif i > 0 and args[i - 1] == b"--password" and arg == value:
                at = offset
            if at >= 0:
                ctypes.memset(start + at, ord("x"), len(value))
                changed += 1
            offset += len(arg) + 1
    for argv in (sys.argv, getattr(sys, "orig_argv", [])):
        for i, arg in enumerate(argv):
            if arg == "--password=" + secret:
                argv[i] = "--password=" + "x" * len(secret)
            elif i > 0 and argv[i - 1] == "--password" and arg == secret:
                argv[i] = "x" * len(secret)
    return changed
