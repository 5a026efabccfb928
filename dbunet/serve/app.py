"""The Ray Serve application: replicas that each hold one Pipeline, behind Serve's HTTP proxy.

Back-pressure is Serve's: each replica takes `max_ongoing` requests at once (1: a CPU replica computes one image
at a time, its ONNX Runtime threads = its CPUs), the router queues up to `max_queued` more per deployment and
answers 503 with Retry-After beyond that; a replica whose process dies is replaced by Serve, and its in-flight
requests fail with a 5xx instead of hanging. Requests are not batched: the step graphs take one latent
(batch 1 with its CFG pair), so a batch would run as a loop anyway.

No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (Request) at definition
time, and they are local to build_app.
"""


import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from dbunet import errors
from dbunet.releases import require
from dbunet.scalars import is_real, is_whole
from dbunet.serve import api

RETRY_AFTER_S = 5


@dataclass(frozen=True)
class ServeOptions:
    artifacts: Path
    backend: str = "auto"
    precision: str | None = None
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas; None: a fixed count
    scale_delays: tuple[float, float] = (30.0, 600.0)  # seconds of load before adding, of calm before removing
    num_cpus: float = 1.0  # per replica
    num_gpus: float = 0.0
    max_ongoing: int = 1
    max_queued: int = 8
    whole_loops: bool | None = None  # None: the backend's default (dbunet.backends.make_backend)

    def __post_init__(self) -> None:
        """The rules of every option, for dbunet-serve's flags and a Serve config file's args alike (a YAML value
        is unchecked), refused here, not in a replica that Serve would restart again and again."""
        from dbunet.backends import check_request

        def refuse(name: str, rule: str):  # named as in a config file and as dbunet-serve's flag
            raise errors.ConfigError(f"{name} (--{name.replace('_', '-')}) must be {rule}, got {getattr(self, name)!r}")

        if not isinstance(self.whole_loops, bool | None):
            refuse("whole_loops", "true, false or null")
        if not is_whole(self.replicas) or self.replicas < 1:
            refuse("replicas", "an integer >= 1")
        if self.autoscale is not None and not (len(self.autoscale) == 2 and all(map(is_whole, self.autoscale))
                                               and 1 <= self.autoscale[0] <= self.autoscale[1]):
            refuse("autoscale", "MIN:MAX with 1 <= MIN <= MAX")
        if not (len(self.scale_delays) == 2 and all(is_real(v) and 0 <= v < 86400 for v in self.scale_delays)):
            refuse("scale_delays", "UP:DOWN seconds, each in 0..86400")
        if not (is_real(self.num_cpus) and self.num_cpus > 0):
            refuse("num_cpus", "a positive finite number")
        if not (is_real(self.num_gpus) and self.num_gpus >= 0):
            refuse("num_gpus", "a finite number >= 0")
        if not is_whole(self.max_ongoing) or self.max_ongoing < 1:
            refuse("max_ongoing", "an integer >= 1")
        if not is_whole(self.max_queued) or self.max_queued < 0:
            refuse("max_queued", "an integer >= 0")
        check_request(self.backend, self.precision, self.whole_loops)

    @property
    def threads(self) -> int:
        """ONNX Runtime threads of a replica: its CPUs, so replicas do not oversubscribe the cores."""
        return max(1, int(self.num_cpus))


def build_app(options: ServeOptions):
    """The Serve application (serve.run it); imports Ray and FastAPI only here."""
    require("ray", errors.ConfigError, "dbunet-serve", "serve")  # a release with BackpressureConfig
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from ray import serve
    from ray.serve.config import BackpressureConfig

    from dbunet import __version__

    http = FastAPI(title="dbunet", version=__version__,
                   description="Text (and layout boxes) to image with the dbunet runtime. POST /v1/images takes "
                               "dbunet-run's options as JSON and answers a PNG.")
    up, down = options.scale_delays
    scaling = ({"autoscaling_config": {"min_replicas": options.autoscale[0], "max_replicas": options.autoscale[1],
                                       "target_ongoing_requests": options.max_ongoing, "upscale_delay_s": up,
                                       "downscale_delay_s": down}}
               if options.autoscale else {"num_replicas": options.replicas})

    @serve.deployment(name="dbunet", max_ongoing_requests=options.max_ongoing,
                      max_queued_requests=options.max_queued,
                      backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
                      ray_actor_options={"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
                      health_check_period_s=2, health_check_timeout_s=30, **scaling)
    @serve.ingress(http)
    class ImageService:
        def __init__(self, artifacts: str, backend: str, precision: str | None, threads: int,
                     whole_loops: bool | None) -> None:
            from ray.serve.metrics import Counter, Histogram

            from dbunet.backends import open_pipeline

            self.pipe = open_pipeline(Path(artifacts), backend, precision, "auto", threads, whole_loops)
            self.images = Counter("dbunet_images_served", description="images answered")
            self.refused = Counter("dbunet_requests_refused", description="requests refused, by HTTP status",
                                   tag_keys=("status",))
            self.stage_s = Histogram("dbunet_stage_seconds", description="seconds per cascade stage",
                                     boundaries=[0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60], tag_keys=("stage",))

        @http.post("/v1/images", response_class=Response,
                   responses={200: {"content": {"image/png": {}, "application/json": {}}},
                              400: {"description": "a request the model cannot take: one `error:` line"},
                              413: {"description": "body over the limit"},
                              503: {"description": "queue full; retry after Retry-After seconds"}})
        async def images(self, request: Request) -> Response:
            try:
                parsed = api.parse(await api.read_body(request.stream(), request.headers.get("content-length")))
                # the model's work in a thread: the replica's event loop keeps answering health checks
                content_type, body, timings = await asyncio.to_thread(self._generate, parsed)
            except api.Refused as refused:
                self.refused.inc(tags={"status": str(refused.status)})
                return PlainTextResponse(refused.body, status_code=refused.status)
            self.images.inc()
            for stage, seconds in timings.items():
                self.stage_s.observe(seconds, tags={"stage": stage})
            return Response(body, media_type=content_type)

        def _generate(self, parsed: api.ImageRequest):
            return api.generate(self.pipe, parsed)

        @http.get("/v1/health")
        def health(self) -> dict:
            return {"status": "ok"}

        @http.get("/v1/model")
        def model(self) -> JSONResponse:
            return JSONResponse(api.model_summary(self.pipe))

    return ImageService.bind(str(options.artifacts), options.backend, options.precision, options.threads,
                             options.whole_loops)


def check_fits(options: ServeOptions, resources: dict[str, float]) -> None:
    """Refuses replicas that a Ray instance of this machine alone cannot place (`resources`: its totals, as
    ray.cluster_resources() gives them): Serve would wait for them silently, for ever."""
    count = options.autoscale[0] if options.autoscale else options.replicas
    for flag, kind, each in (("--num-cpus", "CPU", options.num_cpus), ("--num-gpus", "GPU", options.num_gpus)):
        have, need = resources.get(kind, 0.0), count * each
        if need > have:
            replicas = f"{count} replicas need" if count > 1 else "1 replica needs"
            raise errors.ConfigError(
                f"{replicas} {need:g} {kind}{'' if need == 1 else 's'} ({flag} {each:g}); this machine's Ray "
                f"instance has {have:g}: lower {flag} or the replicas, or set RAY_ADDRESS to a cluster that has them")


# Serve passes a replica constructor's exception on as formatted traceback text; its last line names the class
REPLICA_ERROR = re.compile(r"^dbunet\.errors\.(\w+): (.+)$", re.MULTILINE)


def replica_load_error(message: str) -> errors.DbunetError | None:
    """The dbunet error a replica raised while opening its pipeline, from Serve's deployment status message
    (what only the replica's machine can tell: BF16 on a CPU without it, a precision not exported, engines not
    built); None where the replicas failed for another reason."""
    found = REPLICA_ERROR.findall(message)
    if not found:
        return None
    name, text = found[-1]
    kind = getattr(errors, name, None)
    kind = kind if isinstance(kind, type) and issubclass(kind, errors.DbunetError) else errors.DbunetError
    return kind(f"the replicas could not open the pipeline: {text}")


def run_app(options: ServeOptions, name: str = "dbunet"):
    """serve.run the application; where its replicas cannot open the pipeline, the replica's own one-line error
    is raised here (Serve itself says only that the deployment failed)."""
    from ray import serve

    try:
        return serve.run(build_app(options), name=name, route_prefix="/")
    except RuntimeError:
        app = serve.status().applications.get(name)
        found = [replica_load_error(d.message) for d in app.deployments.values()] if app else []
        error = next((e for e in found if e is not None), None)
        if error is None:
            raise
        raise error from None


def app_builder(args: dict):
    """The application from a Serve config file's `args` (deploy/serve.yaml: `import_path:
    dbunet.serve.app:app_builder`): the ServeOptions fields, `autoscale` as [min, max], `scale_delays` as
    [up, down]."""
    known = set(ServeOptions.__dataclass_fields__)
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"unknown dbunet-serve args {sorted(unknown)}; valid: {sorted(known)}")
    values = dict(args)
    if not isinstance(values.get("artifacts"), str) or not values["artifacts"]:
        raise errors.ConfigError(f"artifacts (--artifacts) must be the path of the directory dbunet-export wrote, got "
                                 f"{values.get('artifacts')!r}")
    values["artifacts"] = Path(values["artifacts"])
    for pair, form in (("autoscale", "[MIN, MAX]"), ("scale_delays", "[UP, DOWN]")):  # YAML lists
        if values.get(pair) is not None:
            if not isinstance(values[pair], list | tuple):
                raise errors.ConfigError(f"{pair} (--{pair.replace('_', '-')}) must be a list {form}, got "
                                         f"{values[pair]!r}")
            values[pair] = tuple(values[pair])
    return build_app(ServeOptions(**values))
