"""dbunet-serve: the artifacts behind HTTP on Ray Serve (pip install -e ".[serve]")."""

from __future__ import annotations

import argparse
import errno
import math
import os
import socket
import sys
import time
from pathlib import Path

from dbunet import backends
from dbunet.cli.common import Parser, add_precision, add_whole_loops, guarded, path_arg, terminate_like_interrupt
from dbunet.errors import ConfigError, InputError
from dbunet.releases import install, require, require_models

DESCRIPTION = """Serve an artifacts directory over HTTP: POST /v1/images with dbunet-run's options as JSON
(prompt, negative_prompt, boxes as 'x0,y0,x1,y1:phrase' strings, seed, steps, scheduler, guidance_scale, height,
width, refiner_steps, ...; "response": "json" for base64 in JSON) answers the PNG dbunet-run would write;
GET /v1/health, GET /v1/model (what it runs and its limits), /docs (the OpenAPI schema). Each replica holds one
pipeline; Ray Serve routes, queues (503 with Retry-After when full), replaces dead replicas and autoscales.
Starts a local Ray instance unless RAY_ADDRESS names a cluster."""


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="dbunet-serve", description=DESCRIPTION)
    p.add_argument("--artifacts", type=path_arg, default=Path("dbunet-artifacts"),
                   help="directory written by dbunet-export (default: dbunet-artifacts)")
    p.add_argument("--backend", choices=backends.CHOICES, default=backends.DEFAULT, help=backends.describe())
    add_precision(p)
    add_whole_loops(p)
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=1, help="a fixed number of replicas (default: 1)")
    scale.add_argument("--autoscale", metavar="MIN:MAX", help="scale between MIN and MAX replicas with the load")
    p.add_argument("--scale-delays", metavar="UP:DOWN",
                   help="with --autoscale: seconds of load before a replica is added, of calm before one is removed "
                        "(default: 30:600, Ray Serve's)")
    p.add_argument("--num-cpus", type=float, default=1.0,
                   help="CPUs per replica, fractions allowed; ONNX Runtime uses that many threads (default: 1)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica, fractions allowed (default: 0)")
    p.add_argument("--max-queued", type=int, default=8,
                   help="requests queued beyond those being computed before 503 (default: 8)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take (default: 300)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port, 1..65535 (default: 8000)")
    return p


def parse_autoscale(text: str) -> tuple[int, int]:
    """'MIN:MAX' as two integers (ServeOptions judges their values)."""
    lo, sep, hi = text.partition(":")
    if not (sep and lo.isdigit() and hi.isdigit()):
        raise InputError(f"--autoscale must be MIN:MAX, two whole numbers, got {text!r}")
    return int(lo), int(hi)


def parse_delays(text: str) -> tuple[float, float]:
    """'UP:DOWN' as two numbers of seconds (ServeOptions judges their values)."""
    up, sep, down = text.partition(":")
    try:
        if sep:
            return float(up), float(down)
    except ValueError:
        pass
    raise InputError(f"--scale-delays must be UP:DOWN, two numbers of seconds, got {text!r}")


def check_listen(host: str, port: int) -> None:
    """Refuse, before Ray starts, an address this machine cannot listen on: a name that does not resolve, an
    address of another machine, a port another server holds or one reserved for root. (Ray's proxy would fail
    to bind after the replicas had started, in a traceback.)"""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"--host {host}: {getattr(exc, 'strerror', None) or exc}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to take
        try:
            probe.bind(address)
        except OSError as exc:
            why = "another server is listening there" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise InputError(f"cannot listen on {host}:{port}: {why}") from None


def options_from(args):
    from dbunet.manifest import export_hint
    from dbunet.serve.app import ServeOptions

    if not (math.isfinite(args.timeout) and args.timeout > 0):  # the other options' rules are ServeOptions'
        raise InputError(f"--timeout must be a positive finite number of seconds, got {args.timeout}")
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port must lie in 1..65535, got {args.port}")
    if args.scale_delays is not None and not args.autoscale:
        raise InputError("--scale-delays goes with --autoscale: a fixed number of replicas does not scale")
    if not (args.artifacts / "manifest.json").is_file():
        raise InputError(f"--artifacts {args.artifacts}: no manifest.json"
                         + (export_hint(args.artifacts) or " (run dbunet-export first)"))
    delays = {"scale_delays": parse_delays(args.scale_delays)} if args.scale_delays is not None else {}
    return ServeOptions(args.artifacts.resolve(), args.backend, args.precision, args.replicas,
                        parse_autoscale(args.autoscale) if args.autoscale else None, num_cpus=args.num_cpus,
                        num_gpus=args.num_gpus, max_queued=args.max_queued, whole_loops=args.whole_loops, **delays)


def check_export(artifacts: Path, backend: str, precision: str | None) -> None:
    """A broken export, or one no run can be made from (some components only, not the precision asked for), is
    refused here, before Ray starts: the replicas would find it only after their start."""
    from dbunet.manifest import Manifest

    manifest = Manifest.read(artifacts)
    name = backends.requested_backend(backend, precision)
    if name is None or not backends.info(name).reference:  # the PyTorch reference loads the model folder instead
        manifest.check_runnable(backends.files_for(backend, precision), f"--artifacts {artifacts}")


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    options = options_from(args)
    check_export(args.artifacts, args.backend, args.precision)
    if "RAY_ADDRESS" not in os.environ:  # on a cluster the proxies listen, and the replicas import, on its nodes
        check_listen(args.host, args.port)
        name = backends.requested_backend(args.backend, args.precision)
        if name is not None and backends.info(name).reference:  # else the replicas say it, after Ray started
            require_models(ConfigError, f"--backend {name}")
    ray = require("ray", ConfigError, "dbunet-serve", "serve")  # before Ray starts
    try:
        from ray import serve
    except ImportError:  # Ray without its serve extra
        raise ConfigError(f"dbunet-serve needs Ray Serve, which is not installed; {install('serve')}") from None
    from dbunet.serve.app import check_fits, run_app

    local = "RAY_ADDRESS" not in os.environ  # else Ray joins the cluster it names
    ray.init(address="local" if local else None, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=False)
    if local:  # a cluster may add nodes on demand; this machine will not
        check_fits(options, ray.cluster_resources())
    serve.start(http_options={"host": args.host, "port": args.port, "request_timeout_s": args.timeout})
    run_app(options)
    # a service manager's stop shuts Serve down too: installed after ray.init, which installs its own handler
    terminate_like_interrupt()
    try:  # from the line on: a stop may follow it at once
        print(f"serving {args.artifacts} at http://{args.host}:{args.port}/v1/images (Ctrl-C stops)", file=sys.stderr)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
