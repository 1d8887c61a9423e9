"""A static file server confined to one directory, run as its own process by the built-in
`WebServer` lifecycle.

    python3 -I staticserver.py --bind ADDRESS --port PORT --directory ROOT

GET and HEAD requests are answered from the files under ROOT (an index.html, or a listing,
for a directory). A request whose path, with every symbolic link resolved, leads out of ROOT
gets 404: the server never serves a file of the host outside its document root, whatever
links are placed in it. The check runs on every request, so a link made after the start is
refused too.

It runs outside the symphonyd package (`python -I <this file>`): it must import only the
standard library. It writes its access log to stderr (the supervisor's log file).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def is_inside(root: str, path: str) -> bool:
    """Whether `path`, every symlink on the way resolved, is the real `root` or below it."""
    real = os.path.realpath(path)
    return os.path.commonpath([root, real]) == root


class ConfinedHandler(SimpleHTTPRequestHandler):
    """`SimpleHTTPRequestHandler` that answers 404 for anything resolving outside its root."""

    server_version = "symphonyd-static"

    def send_head(self) -> Any:
        root = os.path.realpath(self.directory)
        if not is_inside(root, self.translate_path(self.path)):
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        return super().send_head()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1", help="the address to listen on")
    parser.add_argument("--port", type=int, required=True, help="the port to listen on")
    parser.add_argument("--directory", required=True, help="the document root")
    args = parser.parse_args(argv)
    root = os.path.realpath(args.directory)
    if not os.path.isdir(root):
        print(f"staticserver: {args.directory} is not a directory", file=sys.stderr)
        return 2

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
        daemon_threads = True

    with Server((args.bind, args.port), partial(ConfinedHandler, directory=root)) as server:
        print(f"staticserver: serving {root} on {args.bind}:{args.port}", file=sys.stderr)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
