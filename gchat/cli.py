"""Command line: argparse -> Config -> run, until SIGINT or SIGTERM.

This is the only module that reads argv; everything else takes a Config.
"""

import argparse
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional

from gchat import __version__, config_file, logs
from gchat.config import GROUPS, Config, Option, ValueKind, flag_options, help_text
from gchat.protocol import format_address

if TYPE_CHECKING:
    from gchat.workers import WorkerLink

log = logging.getLogger("gchat")


class _ArgumentType:
    """A ValueKind as an argparse type: its ValueError's message is what
    argparse (and --config, config_file.convert) shows, word for word;
    unparse is what --print-config writes back."""

    def __init__(self, kind: ValueKind) -> None:
        self.kind = kind
        self.__name__ = kind.__name__
        self.unparse = kind.unparse

    def __call__(self, text: str) -> Any:
        try:
            return self.kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None


def _argument_type(kind: Optional[Callable[[str], Any]]) -> Optional[Callable[[str], Any]]:
    # int and float stay themselves: argparse words their errors
    # ("invalid int value: 'x'").
    return _ArgumentType(kind) if isinstance(kind, ValueKind) else kind


# The options that are not Config fields: they choose the process (how many
# workers, what it logs) or act instead of configuring.  dest -> Option.
CLI_OPTIONS: dict[str, Option] = {
    "workers": Option(
        default=0,
        flags=("--workers",),
        group="cluster",
        type=int,
        metavar="N",
        help="run N worker processes sharing the port (SO_REUSEPORT), restarted if they "
        "die; needs --redis; 0: one process",
    ),
    "log_level": Option(
        default="INFO",
        flags=("--log-level",),
        group="logging",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="stderr log level",
    ),
    "log_format": Option(
        default="text",
        flags=("--log-format",),
        group="logging",
        choices=logs.LOG_FORMATS,
        help="stderr log format: text, or json for one JSON object per line with the fields "
        "time, level, logger, event and, when known, addr, name, room, reason",
    ),
    "config": Option(
        default=None,
        flags=("--config",),
        group="logging",
        metavar="FILE",
        help="read options from a TOML file: the long options as keys, without '--' "
        '(idle-timeout = 120, compat = true, allow-origin = ["https://a"]); the '
        "command line overrides the file",
    ),
    "print_config": Option(
        default=False,
        flags=("--print-config",),
        group="logging",
        help="print the effective options (defaults, --config's and the command line's) "
        "as a TOML file that --config reads, and exit",
    ),
    "hash_password": Option(
        default=False,
        flags=("--hash-password",),
        group="access",
        help="read a password on standard input, print the line for --oper-password-file "
        "(a salted scrypt hash), and exit",
    ),
}


def all_options() -> dict[str, Option]:
    """Every option with a flag, dest -> Option: Config's fields (their
    dest is the field's name), then CLI_OPTIONS."""
    return {**flag_options(), **CLI_OPTIONS}


def _add_option(group: "argparse._ArgumentGroup", dest: str, opt: Option) -> None:
    kwargs: dict[str, Any] = {
        "dest": dest,
        "default": opt.flag_default,
        # argparse formats help with %: a literal one is %%.
        "help": help_text(opt).replace("%", "%%"),
    }
    if isinstance(opt.default, bool):
        kwargs["action"] = "store_true"
    else:
        kwargs["action"] = "append" if opt.repeatable else "store"
        if opt.type is not None:
            kwargs["type"] = _argument_type(opt.type)
        if opt.choices is not None:
            kwargs["choices"] = opt.choices
        if opt.metavar is not None:
            kwargs["metavar"] = opt.metavar
    group.add_argument(*opt.flags, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The command line, derived from the Options of Config's fields and of
    CLI_OPTIONS, grouped by concern (config.GROUPS)."""
    parser = argparse.ArgumentParser(
        prog="gchat",
        description="Broadcast chat server (gopl.io ch8/chat on gevent). "
        "Connect with `nc HOST PORT`; type /help once named.",
    )
    parser.add_argument("--version", action="version", version=f"gchat {__version__}")
    options = all_options()
    for key, title, description in GROUPS:
        group = parser.add_argument_group(title, description)
        for dest, opt in options.items():
            if opt.group == key:
                _add_option(group, dest, opt)
    return parser


def default_max_clients(headroom: int) -> int:
    """The per-process open-file limit less headroom (at least 1)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft - headroom)


def _with_host(
    address: Optional[tuple[Optional[str], int]], host: str
) -> Optional[tuple[str, int]]:
    if address is None:
        return None
    return (address[0] or host, address[1])


def config_from_args(args: argparse.Namespace) -> Config:
    """The Config of parsed arguments: each flag's value under its field's
    name; one not given (None) leaves the field's default."""
    values: dict[str, Any] = {}
    for name in flag_options():
        value = getattr(args, name)
        if value is None:
            continue
        values[name] = tuple(value) if isinstance(value, list) else value
    # Worked out here, not in Config: it reads the process's file limit.
    values["max_clients"] = args.max_clients or default_max_clients(Config.fd_headroom)
    # --http 8080 listens on --host's address.
    for name in ("http", "admin"):
        values[name] = _with_host(values.get(name), args.host)
    return Config(**values)


def _hash_password() -> int:
    """gchat --hash-password: the password's line, from standard input."""
    import secrets

    from gchat.operators import SALT_BYTES, hash_password

    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        sys.stderr.write("gchat: --hash-password: no password on standard input\n")
        return 1
    print(hash_password(password, secrets.token_bytes(SALT_BYTES)))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    # --config's file becomes the parser's defaults; the command line wins.
    args, source = config_file.parse_args(parser, argv)
    try:
        config = config_from_args(args)
    except ValueError as err:
        parser.error(source.explain(str(err), args) if source else str(err))
    if args.workers < 0:
        parser.error("--workers must not be negative (0, the default, is one process)")
    if args.workers and not args.redis:
        parser.error(
            "--workers needs --redis URL: the workers are separate processes, and "
            "only the Redis bus lets a client on one worker see those on another"
        )
    if args.workers and os.environ.get("LISTEN_PID") == str(os.getpid()):
        parser.error(
            "--workers cannot serve sockets passed by systemd (LISTEN_FDS): "
            "the workers bind the port themselves, with SO_REUSEPORT"
        )
    if args.hash_password:
        return _hash_password()
    if args.print_config:
        # After config_from_args, so that what is printed is known to start.
        sys.stdout.write(
            config_file.dump(
                parser,
                args,
                f"gchat {__version__}: the effective options; "
                "`gchat --config FILE` reads this file back.",
            )
        )
        return 0
    logs.setup(args.log_level, args.log_format)
    from gchat import workers

    if args.workers:
        return workers.supervise(
            config, sys.argv[1:] if argv is None else argv, args.workers, os.environ
        )
    # A worker of a --workers supervisor (workers.py), or None.
    worker = workers.WorkerLink.from_environ(os.environ)
    if worker is not None:
        _name_worker_in_logs(worker.index)
    return run(config, worker)


def _name_worker_in_logs(index: int) -> None:
    """Every log record of worker 2 comes from the logger "gchat.worker2"
    (the text format's name, the JSON format's logger), since all the
    workers write to the supervisor's stderr."""
    make_record = logging.getLogRecordFactory()

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        rec = make_record(*args, **kwargs)
        rec.name = f"{rec.name}.worker{index}"
        return rec

    logging.setLogRecordFactory(record)


def run(config: Config, worker: Optional["WorkerLink"] = None) -> int:
    """Serve until SIGINT or SIGTERM; worker: the link of a --workers
    worker to its supervisor (workers.WorkerLink), None otherwise."""
    # gevent is imported here, not at module level, so that `gchat --help`
    # answers fast and argument errors need no event loop.
    import gevent
    from gevent.event import Event

    from gchat import systemd
    from gchat.server import ChatServer

    # The cluster's bus, with --redis.
    bus: Any = None
    if config.redis:
        from gchat.bus import open_bus

        try:
            bus = open_bus(config)
        except RuntimeError as err:
            log.error("cannot start: %s", err)
            return 1
    try:
        # The ports systemd bound for us (socket activation), served
        # instead of binding; {} otherwise.
        sockets = systemd.listen_sockets(os.environ)
        server = ChatServer(config, sockets=sockets, bus=bus)
    except (OSError, ValueError) as err:  # e.g. an unreadable TLS certificate
        log.error("cannot start: %s", err)
        return 1
    try:
        server.start()
    except OSError as err:
        log.error("cannot listen on %s: %s", format_address(config.host, config.port), err)
        return 1
    if bus is not None:
        bus.start(server.hub.put)
        from gchat.workers import PREDECESSOR_ENV

        predecessor = os.environ.pop(PREDECESSOR_ENV, None)
        if predecessor:
            bus.retire(predecessor)
        log.info(
            "node %s joined cluster %s (%s)",
            bus.node,
            config.cluster,
            "a Redis Cluster" if bus.sharded else "one Redis",
        )
    stop_requested = Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stop_requested.set)
    # SIGHUP reloads the TLS certificate (systemd's ExecReload sends it).
    gevent.signal_handler(signal.SIGHUP, server.reload_tls)
    if sockets:
        log.info(
            "socket activation: serving the %s socket(s) systemd passed", ", ".join(sorted(sockets))
        )
    # The HTTP ports are logged first: whoever waits for "listening on"
    # (tests, scripts) then knows every port.  A worker says "serving on":
    # its supervisor says "listening on" once every worker serves.
    listening = "listening" if worker is None else "serving"
    for name, port in (("http", server.http), ("admin", server.admin)):
        if port is not None:
            where = format_address(*port.address[:2])  # [::1]:8080, as clients are logged
            log.info("%s %s on %s", name, listening, where, extra=logs.fields(addr=where))
    where = format_address(*server.address[:2])
    log.info(
        "gchat %s %s on %s%s",
        __version__,
        listening,
        where,
        " (--compat)" if config.compat else "",
        extra=logs.fields(addr=where),
    )
    # READY=1 only now that every port is serving (Type=notify).
    notifier = systemd.attach(server)
    if worker is not None:
        worker.ready(bus.node if bus is not None else None)
        worker.on_supervisor_gone(stop_requested.set)
    stop_requested.wait()
    log.info("shutting down: closing %d clients", len(server.hub.chat.connected))
    notifier.stopping(f"shutting down: closing {len(server.hub.chat.connected)} clients")
    server.stop()
    if bus is not None:
        bus.close(config.shutdown_flush_timeout)
    notifier.close()
    log.info("stopped; %s", " ".join(f"{k}={v}" for k, v in server.hub.snapshot().items()))
    return 0
