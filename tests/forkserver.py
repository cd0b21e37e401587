"""A pre-imported Python for the script smoke tests: each `$PY -m erasediff ...` forks instead of starting.

Every command of an experiment script is a fresh interpreter that spends ~10 s importing torch,
diffusers and transformers before a smoke run of well under a second. The script tests point the
scripts' `PYTHON` at a shim that hands the command to this server, which imported those libraries
once and forks a child per command. The child gets the caller's stdin/stdout/stderr (passed over the
socket), working directory, environment and argv, runs the module or script as `python` would
(`runpy`, `__main__`), and its exit status becomes the shim's. Each child starts from the same
freshly imported state, so commands cannot see each other; the scripts themselves are unchanged.
Anything other than `-m MODULE ...` or `SCRIPT.py ...` is exec'ed by the real interpreter.

    python tests/forkserver.py serve SOCKET MODULE...   # server: import MODULEs, then serve
    python -S tests/forkserver.py client SOCKET ARGS... # what the shim runs (stdlib only, fast)
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

_LEN = struct.Struct("!Q")
_CODE = struct.Struct("!i")


def _recv_exact(conn: socket.socket, n: int, head: bytes = b"") -> bytes:
    data = bytearray(head)
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return bytes(data)


def _run_child(req: dict) -> int:
    """In the forked child: become the requested `python ARGS...` and return its exit status."""
    import runpy
    import traceback

    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    argv = req["argv"]
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path.insert(0, os.getcwd())  # as `python -m` puts the working directory first
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
            runpy.run_path(argv[0], run_name="__main__")
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # an uncaught error ends `python` with status 1 and a traceback, as here
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def serve(path: str, preload: list[str]) -> None:
    import importlib
    import threading

    for name in preload:
        importlib.import_module(name)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    print("ready", flush=True)

    def reply(conn: socket.socket, pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        conn.sendall(_CODE.pack(os.waitstatus_to_exitcode(status)))
        conn.close()

    while True:
        conn, _ = server.accept()
        msg, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        (size,) = _LEN.unpack(msg[:_LEN.size])
        req = json.loads(_recv_exact(conn, size, msg[_LEN.size:]))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            server.close()
            conn.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            os._exit(_run_child(req))
        for fd in fds:
            os.close(fd)
        threading.Thread(target=reply, args=(conn, pid), daemon=True).start()


def client(path: str, argv: list[str]) -> int:
    forked = (len(argv) >= 2 and argv[0] == "-m") or (argv and argv[0].endswith(".py"))
    if not forked:
        real = os.environ["FORKSERVER_PYTHON"]
        os.execv(real, [real, *argv])
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    payload = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [_LEN.pack(len(payload)) + payload], [0, 1, 2])
    (code,) = _CODE.unpack(_recv_exact(conn, _CODE.size))
    return code


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(client(sys.argv[2], sys.argv[3:]))
