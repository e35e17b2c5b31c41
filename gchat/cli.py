"""Command line: argparse -> Config -> run, until SIGINT or SIGTERM.

This is the only module that reads argv; everything else takes a Config.
"""
import argparse
import logging
import os
import signal
import sys

from gchat import __version__, config_file, logs
from gchat.config import SLOW_POLICIES, Config
from gchat.protocol import format_address

log = logging.getLogger("gchat")


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024)."""
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if text and text[-1] in units:
            value = int(float(text[:-1]) * units[text[-1]])
        else:
            value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _host_port(text: str) -> tuple:
    """[HOST:]PORT; the host is None when not given (then --host's)."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not [HOST:]PORT: {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {number}")
    return (host.strip("[]") or None, number)


# The inverses, for --print-config, which writes each option as the text
# its type reads back (config_file.dump).
_host_port.unparse = lambda value: (format_address(*value) if value[0] is not None
                                    else str(value[1]))


def _cidrs(text: str) -> tuple:
    """Comma-separated networks, checked here so that a typo is an error."""
    import ipaddress
    nets = tuple(part.strip() for part in text.split(",") if part.strip())
    try:
        for net in nets:
            ipaddress.ip_network(net, strict=False)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not nets:
        raise argparse.ArgumentTypeError("no network given")
    return nets


_cidrs.unparse = ", ".join


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    parser = argparse.ArgumentParser(
        prog="gchat",
        description="Broadcast chat server (gopl.io ch8/chat on gevent). "
                    "Connect with `nc HOST PORT`; type /help once named.")
    parser.add_argument("--version", action="version", version=f"gchat {__version__}")
    parser.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=d.port,
                        help="TCP port (default %(default)s; 0 picks a free port)")
    parser.add_argument("--compat", action="store_true",
                        help="the seed's protocol byte for byte: no names, no commands, "
                             "every line is chat, clients are known by HOST:PORT")
    parser.add_argument("--idle-timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="disconnect a client silent this long (default 300; "
                             "off in --compat unless given; 0 turns it off)")
    parser.add_argument("--name-timeout", type=_seconds, default=d.name_timeout, metavar="SECONDS",
                        help="disconnect a client that gives no name this long "
                             "(default %(default)g; 0 turns it off)")
    parser.add_argument("--sendq", type=_size, default=d.sendq, metavar="BYTES",
                        help="output bytes that may wait for one client before "
                             "--slow-policy applies (default %(default)s; K/M suffixes allowed)")
    parser.add_argument("--slow-policy", choices=SLOW_POLICIES, default=d.slow_policy,
                        help="when a client's send queue is full: disconnect it, or drop "
                             "messages for it and tell it how many (default %(default)s)")
    parser.add_argument("--sndbuf", type=_size, default=None, metavar="BYTES",
                        help="kernel send buffer per client (SO_SNDBUF); default: the "
                             "kernel's autotuning")
    parser.add_argument("--max-line", type=_size, default=d.max_line, metavar="BYTES",
                        help="longest line accepted, in bytes before decoding; a longer "
                             "one is discarded with an error (default %(default)s)")
    parser.add_argument("--flood-rate", type=float, default=None, metavar="LINES",
                        help="lines per second a client may send on average; more are "
                             "delayed, not dropped (default 10; off in --compat; 0 turns it off)")
    parser.add_argument("--flood-burst", type=int, default=d.flood_burst, metavar="LINES",
                        help="lines a client may send at once before --flood-rate applies "
                             "(default %(default)s)")
    parser.add_argument("--max-clients", type=int, default=None, metavar="N",
                        help="connections served at once; more get 'server full' "
                             f"(default: the open-file limit less {d.fd_headroom})")
    parser.add_argument("--max-per-ip", type=int, default=d.max_per_ip, metavar="N",
                        help="connections from one IP address at once (default 0: no limit)")
    parser.add_argument("--backlog", type=int, default=d.backlog, metavar="N",
                        help="pending connections the kernel may queue (default %(default)s)")
    parser.add_argument("--roster-limit", type=int, default=d.roster_limit, metavar="N",
                        help="names shown in a newcomer's roster line (default %(default)s)")
    parser.add_argument("--arrival-merge-threshold", type=int, default=d.arrival_merge_threshold,
                        metavar="N",
                        help="in a room of at least N members, arrivals at the same moment "
                             "are announced in one line (default %(default)s)")
    parser.add_argument("--arrival-merge-window", type=_seconds, default=d.arrival_merge_window,
                        metavar="SECONDS",
                        help="how long such arrivals may wait to be merged (default %(default)g)")
    parser.add_argument("--max-rooms", type=int, default=d.max_rooms, metavar="N",
                        help="rooms that may exist, the lobby and empty ones included; the "
                             "least recently used empty room is dropped for a new one "
                             "(default %(default)s)")
    parser.add_argument("--history", type=int, default=d.history, metavar="N",
                        help="chat lines each room keeps for newcomers (default %(default)s; "
                             "0 turns it off)")
    parser.add_argument("--room-name-max", type=int, default=d.room_name_max, metavar="CHARS",
                        help="longest room name, without the # (default %(default)s)")
    parser.add_argument("--http", type=_host_port, default=None, metavar="[HOST:]PORT",
                        help="serve the chat page, its WebSocket (/ws), /healthz and /metrics "
                             "over HTTP on this port (0 picks a free one; default: off)")
    parser.add_argument("--admin", type=_host_port, default=None, metavar="[HOST:]PORT",
                        help="serve /healthz and /metrics on this port instead of --http's")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="a page origin (e.g. https://chat.example.org) that may open a "
                             "WebSocket besides the server's own; repeatable")
    parser.add_argument("--ws-max-message", type=_size, default=d.ws_max_message, metavar="BYTES",
                        help="largest WebSocket message a client may send; a larger one closes "
                             "with 1009 (default %(default)s)")
    parser.add_argument("--http-header-timeout", type=_seconds, default=d.http_header_timeout,
                        metavar="SECONDS",
                        help="time an HTTP client has to send a request head (default %(default)g)")
    parser.add_argument("--tls-cert", default=None, metavar="FILE",
                        help="PEM certificate chain: the line port speaks TLS (with --tls-key); "
                             "SIGHUP reloads it")
    parser.add_argument("--tls-key", default=None, metavar="FILE",
                        help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", default=None, metavar="FILE",
                        help="PEM CA bundle: clients must present a certificate it signed")
    parser.add_argument("--tls-handshake-timeout", "--handshake-timeout", type=_seconds,
                        default=d.handshake_timeout, metavar="SECONDS", dest="handshake_timeout",
                        help="time a connection has for its PROXY header and TLS handshake "
                             "(default %(default)g)")
    parser.add_argument("--proxy-protocol", action="store_true",
                        help="expect a PROXY protocol header (v1 or v2) on each connection")
    parser.add_argument("--proxy-from", type=_cidrs, default=d.proxy_from, metavar="CIDRS",
                        help="comma-separated networks allowed to send a PROXY header "
                             "(default: loopback)")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="join a cluster of gchat nodes over Redis: "
                             "redis://[:PASSWORD@]HOST:PORT/DB, rediss:// for TLS "
                             "(needs pip install 'gchat[cluster]'; default: one process)")
    parser.add_argument("--cluster", default=d.cluster, metavar="NAME",
                        help="the cluster's name, the prefix of its Redis keys "
                             "(default %(default)s)")
    parser.add_argument("--node-timeout", type=_seconds, default=d.node_timeout,
                        metavar="SECONDS",
                        help="a node silent this long is declared lost and its members "
                             "leave (default %(default)g)")
    parser.add_argument("--bus-backlog", type=int, default=d.bus_backlog, metavar="LINES",
                        help="lines a node holds while Redis is down; past it senders are "
                             "told their line was not sent (default %(default)s)")
    parser.add_argument("--bus-replay-window", type=_seconds, default=d.bus_replay_window,
                        metavar="SECONDS",
                        help="how long a node keeps what it published, to publish it again "
                             "if Redis restarts empty (default %(default)g)")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="run N worker processes sharing the port (SO_REUSEPORT), "
                             "restarted if they die; needs --redis (default: one process)")
    parser.add_argument("--reuse-port", action="store_true",
                        help="set SO_REUSEPORT on the listening sockets (what --workers "
                             "gives its workers)")
    parser.add_argument("--close-linger", type=_seconds, default=d.close_linger, metavar="SECONDS",
                        help="time a disconnected client gets to receive its last lines "
                             "(default %(default)g)")
    parser.add_argument("--shutdown-timeout", type=_seconds, default=d.shutdown_flush_timeout,
                        metavar="SECONDS",
                        help="on SIGINT/SIGTERM, how long queued output may take to "
                             "flush (default %(default)g)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="stderr log level (default %(default)s)")
    parser.add_argument("--log-format", default="text", choices=logs.LOG_FORMATS,
                        help="stderr log format: text, or json for one JSON object per line "
                             "with the fields time, level, logger, event and, when known, "
                             "addr, name, room, reason (default %(default)s)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="read options from a TOML file: the long options as keys, "
                             "without '--' (idle-timeout = 120, compat = true, allow-origin "
                             "= [\"https://a\"]); the command line overrides the file")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective options (defaults, --config's and the "
                             "command line's) as a TOML file that --config reads, and exit")
    return parser


def default_max_clients(headroom: int) -> int:
    """The per-process open-file limit less headroom (at least 1)."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft - headroom)


def _with_host(address, host):
    if address is None:
        return None
    return (address[0] or host, address[1])


def config_from_args(args) -> Config:
    max_clients = args.max_clients or default_max_clients(Config.fd_headroom)
    return Config(host=args.host, port=args.port, compat=args.compat,
                  flood_rate=args.flood_rate, flood_burst=args.flood_burst,
                  max_clients=max_clients, max_per_ip=args.max_per_ip,
                  idle_timeout=args.idle_timeout, name_timeout=args.name_timeout,
                  sendq=args.sendq, sndbuf=args.sndbuf or 0, slow_policy=args.slow_policy,
                  max_line=args.max_line, roster_limit=args.roster_limit,
                  arrival_merge_threshold=args.arrival_merge_threshold,
                  arrival_merge_window=args.arrival_merge_window,
                  max_rooms=args.max_rooms, history=args.history,
                  http=_with_host(args.http, args.host), admin=_with_host(args.admin, args.host),
                  allow_origin=tuple(args.allow_origin), ws_max_message=args.ws_max_message,
                  http_header_timeout=args.http_header_timeout,
                  tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                  handshake_timeout=args.handshake_timeout,
                  proxy_protocol=args.proxy_protocol, proxy_from=tuple(args.proxy_from),
                  room_name_max=args.room_name_max,
                  redis=args.redis, cluster=args.cluster, node_timeout=args.node_timeout,
                  bus_backlog=args.bus_backlog, bus_replay_window=args.bus_replay_window,
                  reuse_port=args.reuse_port,
                  backlog=args.backlog, close_linger=args.close_linger,
                  shutdown_flush_timeout=args.shutdown_timeout)


def main(argv=None) -> int:
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
        parser.error("--workers needs --redis URL: the workers are separate processes, and "
                     "only the Redis bus lets a client on one worker see those on another")
    if args.workers and os.environ.get("LISTEN_PID") == str(os.getpid()):
        parser.error("--workers cannot serve sockets passed by systemd (LISTEN_FDS): "
                     "the workers bind the port themselves, with SO_REUSEPORT")
    if args.print_config:
        # After config_from_args, so that what is printed is known to start.
        sys.stdout.write(config_file.dump(
            parser, args, f"gchat {__version__}: the effective options; "
                          "`gchat --config FILE` reads this file back."))
        return 0
    logs.setup(args.log_level, args.log_format)
    from gchat import workers
    if args.workers:
        return workers.supervise(config, sys.argv[1:] if argv is None else argv, args.workers,
                                 os.environ)
    # A worker of a --workers supervisor (workers.py), or None.
    worker = workers.WorkerLink.from_environ(os.environ)
    if worker is not None:
        _name_worker_in_logs(worker.index)
    return run(config, worker)


def _name_worker_in_logs(index: int):
    """Every log record of worker 2 comes from the logger "gchat.worker2"
    (the text format's name, the JSON format's logger), since all the
    workers write to the supervisor's stderr."""
    make_record = logging.getLogRecordFactory()

    def record(*args, **kwargs):
        rec = make_record(*args, **kwargs)
        rec.name = f"{rec.name}.worker{index}"
        return rec

    logging.setLogRecordFactory(record)


def run(config: Config, worker=None) -> int:
    """Serve until SIGINT or SIGTERM; worker: the link of a --workers
    worker to its supervisor (workers.WorkerLink), None otherwise."""
    # gevent is imported here, not at module level, so that `gchat --help`
    # answers fast and argument errors need no event loop.
    import gevent
    from gevent.event import Event

    from gchat import systemd
    from gchat.server import ChatServer

    bus = histories = None
    if config.redis:
        from gchat.bus import open_bus
        try:
            bus, histories = open_bus(config)
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
        server.hub.chat.load_histories(histories)
        bus.start(server.hub.put)
        from gchat.workers import PREDECESSOR_ENV
        predecessor = os.environ.pop(PREDECESSOR_ENV, None)
        if predecessor:
            bus.retire(predecessor)
        log.info("node %s joined cluster %s (%d rooms with history)", bus.node,
                 config.cluster, len(histories))
    stop_requested = Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stop_requested.set)
    # SIGHUP reloads the TLS certificate (systemd's ExecReload sends it).
    gevent.signal_handler(signal.SIGHUP, server.reload_tls)
    if sockets:
        log.info("socket activation: serving the %s socket(s) systemd passed",
                 ", ".join(sorted(sockets)))
    # The HTTP ports are logged first: whoever waits for "listening on"
    # (tests, scripts) then knows every port.  A worker says "serving on":
    # its supervisor says "listening on" once every worker serves.
    listening = "listening" if worker is None else "serving"
    for name, port in (("http", server.http), ("admin", server.admin)):
        if port is not None:
            where = format_address(*port.address[:2])  # [::1]:8080, as clients are logged
            log.info("%s %s on %s", name, listening, where, extra=logs.fields(addr=where))
    where = format_address(*server.address[:2])
    log.info("gchat %s %s on %s%s", __version__, listening, where,
             " (--compat)" if config.compat else "", extra=logs.fields(addr=where))
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
