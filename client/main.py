"""``qqchat-client``: command line, connection, and the one reactor that runs it all."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from qqchat_client.commands import help_text
from qqchat_client.console import ChatConsole, PlainScreen, TerminalScreen, restore_terminals
from qqchat_client.net import TLSSetupError, describe_tls_failure, tls_options
from qqchat_client.tokens import TokenStore
from twisted.internet import endpoints, stdio, task

#: seconds for the TCP connection, and then for the TLS handshake
CONNECT_TIMEOUT = 10

EPILOG = """\
With a terminal on stdin and stdout the client is interactive: type 'help'.
Otherwise it reads one command per line from stdin, runs each after the previous
one's reply, and exits when stdin ends: 0 if every command succeeded, 1 if not.
Passwords: asked for (without echo) in a terminal; for scripts give --password
or set QQCHAT_PASSWORD (and QQCHAT_NEW_PASSWORD for passwd). A lost connection
exits with status 1.
'login --remember NAME' saves a session token (readable by you only) in
$XDG_CONFIG_HOME/qqchat/tokens.json, default ~/.config/qqchat/tokens.json; the next
'login NAME' to the same --host and --port uses it instead of a password, and
quitting keeps it; 'logout' ends the session and deletes the token.

"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qqchat-client",
        description="Console client for the qqchat daemon.",
        epilog=EPILOG + help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default=os.environ.get("QQCHAT_HOST", "127.0.0.1"),
                        help="daemon address (default: %(default)s, env QQCHAT_HOST)")
    parser.add_argument("--port", type=int, default=os.environ.get("QQCHAT_PORT", "6000"),
                        help="daemon port (default: %(default)s, env QQCHAT_PORT)")
    parser.add_argument("--user", default=os.environ.get("QQCHAT_USER"),
                        help="log in as this name or id at start, with its saved session "
                             "if there is one (env QQCHAT_USER)")
    parser.add_argument("--password", default=None,
                        help="password for login and register; prefer env QQCHAT_PASSWORD, "
                             "which other local users cannot see in the process list")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS; the server's certificate must be signed by a "
                             "CA the system trusts and name --host")
    parser.add_argument("--cafile", metavar="PATH",
                        help="trust the CA certificate(s) in this PEM file instead of the "
                             "system's, for a private CA (implies --tls)")
    parser.add_argument("--raw", action="store_true",
                        help="show the JSON lines sent (prefixed '> ') and received, "
                             "instead of readable text")
    return parser


async def run(reactor: Any, args: argparse.Namespace, tls: Any = None) -> None:
    interactive = os.isatty(0) and os.isatty(1)
    password = args.password if args.password is not None else os.environ.get(
        "QQCHAT_PASSWORD")
    address = f"{args.host}:{args.port}"
    console = ChatConsole(reactor, address, password=password, raw=args.raw,
                          interactive=interactive, tokens=TokenStore(),
                          new_password=os.environ.get("QQCHAT_NEW_PASSWORD"))
    endpoint = endpoints.HostnameEndpoint(reactor, args.host, args.port,
                                          timeout=CONNECT_TIMEOUT)
    if tls is not None:
        endpoint = endpoints.wrapClientTLS(tls, endpoint)
    try:
        proto = await endpoints.connectProtocol(endpoint, console.protocol())
    except Exception as e:
        sys.stderr.write(f"qqchat-client: cannot connect to {address}: {e}\n")
        raise SystemExit(1) from None
    if tls is not None:
        # nothing is shown or sent before the server has proven who it is
        try:
            await proto.when_secure().addTimeout(CONNECT_TIMEOUT, reactor)
        except Exception as e:
            if proto.transport is not None and proto.is_open:
                proto.transport.abortConnection()
            sys.stderr.write(f"qqchat-client: cannot connect to {address}: "
                             f"{describe_tls_failure(e, args.host, args.cafile)}\n")
            raise SystemExit(1) from None

    screen = TerminalScreen(console) if interactive else PlainScreen(console, os.isatty(0))
    stdio.StandardIO(screen, reactor=reactor)
    console.start(screen)
    if args.user:
        console.line(f"login {args.user}")

    def on_signal(signum: int, frame: Any) -> None:
        reactor.callFromThread(console.interrupt)

    def install_signals() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, on_signal)

    reactor.callWhenRunning(install_signals)
    code = await console.done
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be 1-65535")
    tls = None
    if args.tls or args.cafile:
        try:
            tls = tls_options(args.host, args.cafile)
        except TLSSetupError as e:
            parser.error(str(e))
    try:
        task.react(run, (args, tls))
    finally:
        restore_terminals()

