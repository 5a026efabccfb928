"""dbunet-serve on a real local Ray Serve (started once for the module; skipped where Ray is not installed):
the image over HTTP against dbunet-run's file, refusals, back-pressure, two replicas under concurrent load, and
a replica killed mid-load."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

ray = pytest.importorskip("ray", reason="dbunet-serve's tests need Ray Serve (pip install -e \".[serve]\")")
serve = pytest.importorskip("ray.serve")

from net import free_port  # noqa: E402

from dbunet.serve import api  # noqa: E402
from dbunet.serve.app import ServeOptions, build_app  # noqa: E402

PROMPT = "a red circle above a blue square"


@pytest.fixture(scope="module")
def server(tiny_artifacts):
    """Ray with 4 logical CPUs (replicas of 1 CPU each), Serve's proxy on a free loopback port. A test that asks
    for the options already deployed, and running, gets that deployment (a redeploy restarts every replica)."""
    from ray.serve.schema import ApplicationStatus

    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 120})
    deployed = {}

    def deploy(**options):
        opts = ServeOptions(tiny_artifacts, "ort", "fp32", **options)
        app = serve.status().applications.get("dbunet")  # another deploy of the name (a test's dbunet-serve)
        if deployed.get("options") != opts or app is None or app.status != ApplicationStatus.RUNNING:
            deployed.clear()  # until serve.run returns: a deploy that fails leaves nothing to reuse
            serve.run(build_app(opts), name="dbunet", route_prefix="/")
            deployed["options"] = opts
        return f"http://127.0.0.1:{port}"

    yield deploy
    serve.shutdown()
    ray.shutdown()


def post(url: str, body, timeout: float = 120) -> tuple[int, dict, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/v1/images", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dbunet.cli.run", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(sys.platform != "linux", reason="SIGTERM to a child process: a POSIX signal")
def test_sigterm_shuts_dbunet_serve_down_like_ctrl_c(tiny_artifacts):
    """What a service manager's stop sends. Before: Ray's own handler (installed by ray.init) printed a stack dump
    and the process died without shutting Serve down. First in this module: its own local Ray, not the fixture's."""
    proc = subprocess.Popen([sys.executable, "-m", "dbunet.cli.serve", "--artifacts", str(tiny_artifacts), "--port",
                             str(free_port())], stderr=subprocess.PIPE, text=True)
    try:
        said = []
        for line in proc.stderr:  # until it serves (or ends)
            said.append(line)
            if line.startswith("serving "):
                break
        assert said and said[-1].startswith("serving "), "".join(said[-20:])
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "SIGTERM received" not in rest, rest[-3000:]


def test_an_image_over_http_is_byte_identical_to_dbunet_run(server, tiny_artifacts, tmp_path):
    url = server()
    status, headers, png = post(url, {"prompt": PROMPT, "seed": 7, "steps": 4, "boxes": ["0.1,0.1,0.5,0.5:a circle"]})
    assert status == 200 and headers["content-type"] == "image/png"
    out = tmp_path / "cli.png"
    proc = _cli("--artifacts", str(tiny_artifacts), "--backend", "ort", "--precision", "fp32", "--prompt", PROMPT,
                "--seed", "7", "--steps", "4", "--box", "0.1,0.1,0.5,0.5:a circle", "--output", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert png == out.read_bytes()  # pixels and provenance chunks alike
    status, _, body = post(url, {"prompt": PROMPT, "seed": 7, "steps": 4, "boxes": ["0.1,0.1,0.5,0.5:a circle"],
                                 "response": "json"})
    import base64

    answer = json.loads(body)
    assert status == 200 and base64.b64decode(answer["image_png_base64"]) == png
    assert answer["metadata"]["seed"] == "7" and answer["timings_s"]["total"] > 0
    with urllib.request.urlopen(f"{url}/v1/model", timeout=30) as r:
        model = json.loads(r.read())
    assert model["architecture"] == "dbunet" and model["limits"]["max_height"] == 512 and model["backend"] == "ort"
    assert model["defaults"]["scheduler"] == "ddim" and model["defaults"]["karras_sigmas"] is False
    # the samplers a request may name, and those that take Karras sigmas
    assert "pndm" in model["limits"]["schedulers"] and model["limits"]["karras_sigmas_with"] == ["euler", "dpm++",
                                                                                                "dpm++-sde"]
    assert model["whole_loops"] is False  # ONNX Runtime's default on the CPU
    with urllib.request.urlopen(f"{url}/v1/health", timeout=30) as r:
        assert json.loads(r.read()) == {"status": "ok"}
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=30) as r:
        assert "/v1/images" in json.loads(r.read())["paths"]


def test_whole_loops_reach_the_replicas(server, tiny_artifacts, tmp_path):
    """--whole-loops (ServeOptions.whole_loops) is the replicas' backend option: /v1/model says so, and the image
    is dbunet-run's with the same option."""
    url = server(whole_loops=True)
    with urllib.request.urlopen(f"{url}/v1/model", timeout=30) as r:
        assert json.loads(r.read())["whole_loops"] is True
    status, _, png = post(url, {"prompt": PROMPT, "seed": 5, "steps": 3})
    out = tmp_path / "cli.png"
    proc = _cli("--artifacts", str(tiny_artifacts), "--backend", "ort", "--precision", "fp32", "--prompt", PROMPT,
                "--seed", "5", "--steps", "3", "--whole-loops", "--output", str(out), "--quiet")
    assert status == 200 and proc.returncode == 0, proc.stderr
    assert png == out.read_bytes()


def test_replicas_that_cannot_open_the_pipeline_end_dbunet_serve_with_their_error_line(server, tiny_artifacts,
                                                                                       tmp_path, capsys):
    """What only a replica can tell (here a graph file changed since the export: the replicas hash every file they
    load, the launcher does not; elsewhere BF16 on a CPU without it, engines not built) is not refused before Ray
    starts, and Serve says only that the deployment failed: dbunet-serve prints the replica's own error line and
    exits 2, without a traceback."""
    import shutil

    from dbunet.cli import serve as serve_cli

    server()  # Ray and Serve running, as on a cluster dbunet-serve joins
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    graph = art / "fp32" / "vae_decoder.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    code = serve_cli.main(["--artifacts", str(art), "--backend", "ort", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the replicas could not open the pipeline: ") and "vae_decoder.onnx" in last, last


def test_dbunet_serve_refuses_replicas_its_local_ray_cannot_place(server, tiny_artifacts, capsys, monkeypatch):
    """Without RAY_ADDRESS the Ray instance is this machine's (here the module's: 4 CPUs, no GPU): a GPU replica
    would wait for ever, so it is refused in one line before anything deploys."""
    from dbunet.cli import serve as serve_cli
    from dbunet.serve import app

    server()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(app, "run_app", lambda options: pytest.fail("deployed: Serve would wait for ever"))
    code = serve_cli.main(["--artifacts", str(tiny_artifacts), "--num-gpus", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: 1 replica needs 1 GPU (--num-gpus 1); this machine's Ray "
                                            "instance has 0"), err


def test_dbunet_serve_refuses_an_address_it_cannot_listen_on_before_ray_starts(tiny_artifacts, capsys, monkeypatch):
    """A port another server holds: Ray's proxy failed to bind after the replicas had started, in a traceback."""
    from dbunet.cli import serve as serve_cli

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code = serve_cli.main(["--artifacts", str(tiny_artifacts), "--port", str(port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: cannot listen on 127.0.0.1:{port}: another server is listening there"]
    serve_cli.check_listen("127.0.0.1", port)  # free again once the other server is gone


def test_a_ray_without_the_back_pressure_settings_is_refused_before_it_starts(tiny_artifacts, capsys, monkeypatch):
    """BackpressureConfig came in Ray 2.58 (2.50 to 2.57 were admitted): dbunet-serve died in an ImportError
    traceback after Ray had started. Both ways in (the command, and the app a cluster config builds) name the fix."""
    from dbunet.cli import serve as serve_cli
    from dbunet.errors import ConfigError

    monkeypatch.setattr(ray, "__version__", "2.57.1")
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    code = serve_cli.main(["--artifacts", str(tiny_artifacts), "--port", str(free_port())])
    says = ("error: Ray 2.57.1 is older than 2.58, whose Serve brings the back-pressure settings dbunet-serve uses "
            "(503 with Retry-After on a full queue); pip install 'ray[serve]>=2.58,<3'")
    assert code == 2 and capsys.readouterr().err.strip().splitlines() == [says]
    with pytest.raises(ConfigError, match=r"Ray 2\.57\.1 is older than 2\.58"):
        build_app(ServeOptions(tiny_artifacts, "ort", "fp32"))
    monkeypatch.setattr(ray, "__version__", "2.58.0")
    assert build_app(ServeOptions(tiny_artifacts, "ort", "fp32")) is not None


def test_the_reference_without_torch_is_refused_before_ray_starts(tiny_artifacts, capsys, monkeypatch):
    """Where the replicas run on this machine (no RAY_ADDRESS), they import what the backend needs here: without
    torch, `--backend torch` was said by the replicas, after Ray had started (about 25 s in)."""
    import sys

    from dbunet.cli import serve as serve_cli

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # as where the export extra is not installed
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    code = serve_cli.main(["--artifacts", str(tiny_artifacts), "--backend", "torch", "--port", str(free_port())])
    said = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and said == ["error: --backend torch needs torch, which is not installed; "
                                  'pip install -e ".[export]"']


@pytest.mark.parametrize(("body", "cli"), [
    ({"prompt": PROMPT, "boxes": ["0.1,0.2:a cat"]}, ["--box", "0.1,0.2:a cat"]),
    ({"prompt": PROMPT, "height": 4096}, ["--height", "4096"]),
    ({"prompt": PROMPT, "scheduler": "nope"}, None),
    ({"prompt": PROMPT, "steps": "many"}, None),
    ({"prompt": PROMPT, "colour": "red"}, None),
    ({"prompt": PROMPT, "karras_sigmas": True}, ["--karras-sigmas"]),  # the model's sampler is DDIM
    ({"prompt": PROMPT, "scheduler": "euler", "karras_sigmas": "yes"}, None),
    (b"{not json", None),
])
def test_a_bad_request_gets_400_and_the_error_line(server, tiny_artifacts, tmp_path, body, cli):
    url = server()
    status, headers, text = post(url, body)
    assert status == 400 and headers["content-type"].startswith("text/plain"), (status, text)
    line = text.decode()
    assert line.startswith("error: ") and line.count("\n") == 1
    if cli is not None:  # the same line dbunet-run prints for the same option
        proc = _cli("--artifacts", str(tiny_artifacts), "--prompt", PROMPT, *cli, "--output",
                    str(tmp_path / "x.png"))
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == line.strip()


def test_an_oversized_body_gets_413(server):
    url = server()
    status, _, text = post(url, {"prompt": "x" * (api.MAX_BODY + 1)})
    assert status == 413 and text.startswith(b"error: request body of")


def _post_chunked(url: str, chunks) -> tuple[int, bytes]:
    """POST with Transfer-Encoding: chunked (no Content-Length: the body's size is known only by reading it)."""
    import http.client
    import urllib.parse

    where = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
    try:
        try:
            conn.request("POST", "/v1/images", body=iter(chunks), headers={"Content-Type": "application/json"})
        except (BrokenPipeError, ConnectionResetError):  # the server may answer before the rest was sent
            pass
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_chunked_body_is_read_and_one_past_the_limit_gets_413(server):
    url = server()
    status, body = _post_chunked(url, [b'{"prompt": "a cat", ', b'"steps": 2}'])
    assert status == 200 and body.startswith(b"\x89PNG"), (status, body[:200])
    status, body = _post_chunked(url, [b'{"prompt": "'] + [b"x" * 4096] * (4 * api.MAX_BODY // 4096) + [b'"}'])
    assert status == 413 and body.startswith(b"error: request body of over"), (status, body[:200])


def test_two_replicas_serve_twenty_concurrent_requests(server):
    url = server(replicas=2, max_queued=32)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda seed: post(url, {"prompt": PROMPT, "seed": seed, "steps": 2}), range(20)))
    assert [r[0] for r in results] == [200] * 20
    assert len({r[2] for r in results}) == 20  # twenty seeds, twenty images


def test_a_full_queue_gets_503_with_retry_after(server):
    url = server(replicas=1, max_queued=1)
    # All eight must arrive while the first image computes: a barrier releases them together, and a 256x256
    # image (about 2.5 s on a one-CPU replica) outlasts a loaded machine's scheduling delay. With the default
    # 128x128 the first could finish before the last request arrived, and a third was served.
    start = threading.Barrier(8)

    def burst(seed: int):
        start.wait(timeout=60)
        return post(url, {"prompt": PROMPT, "seed": seed, "steps": 20, "height": 256, "width": 256})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(burst, range(8)))
    codes = [r[0] for r in results]
    # one computing and one queued would serve two, but Serve enforces the limit approximately (it counts per router;
    # one CI run served three of the eight), so the test asks that at most half are served: without the limit all are
    assert codes.count(200) >= 1 and codes.count(503) >= 4 and set(codes) <= {200, 503}, codes
    assert all(r[1].get("retry-after") == "5" for r in results if r[0] == 503)


def _replica_pids() -> list[int]:
    """The replicas' processes, by the title Ray gives them (ray::ServeReplica:<app>:<deployment>)."""
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ServeReplica:dbunet" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return pids


def test_a_replica_killed_during_load_fails_its_requests_cleanly_and_the_service_recovers(server):
    """Every request ends (answered, or a 5xx) within the client's timeout: none hangs; Serve replaces the dead
    replica and the service answers again."""
    url = server(replicas=2, max_queued=32)
    _wait_for_replicas(2)  # and no process of an earlier deployment left
    pids = _replica_pids()
    results = []

    def load():
        with ThreadPoolExecutor(10) as pool:
            results.extend(pool.map(lambda seed: post(url, {"prompt": PROMPT, "seed": seed, "steps": 30}, timeout=90),
                                    range(10)))

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(1.5)  # requests in flight on both replicas
    os.kill(pids[0], signal.SIGKILL)
    thread.join(timeout=150)
    assert not thread.is_alive(), "a request hung"
    codes = [r[0] for r in results]
    assert len(codes) == 10 and all(c == 200 or 500 <= c < 600 for c in codes), codes
    assert codes.count(200) >= 1
    deadline = time.time() + 90
    while time.time() < deadline:  # the replacement comes up; meanwhile the other replica serves
        if post(url, {"prompt": PROMPT, "steps": 2})[0] == 200 and len(_replica_pids()) == 2:
            break
        time.sleep(2)
    else:
        pytest.fail("the service did not recover two replicas within 90 s")


def test_autoscaling_adds_a_replica_under_load_and_removes_it_after(server):
    """--autoscale 1:2 with short delays: 8 clients posting back to back keep one replica's queue full until Serve
    has started the second (however long a replica takes to start on this machine); when the load ends it goes
    back to one."""
    url = server(autoscale=(1, 2), scale_delays=(1.0, 4.0), max_queued=32)
    _wait_for_replicas(1)  # the previous test's deployment stops its replicas after serve.run returns
    seen, codes, stop = [], [], threading.Event()

    def client(seed: int) -> None:
        while not stop.is_set():
            codes.append(post(url, {"prompt": PROMPT, "seed": seed, "steps": 30})[0])
            seed += 8

    clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for c in clients:
        c.start()
    deadline = time.time() + 120
    while time.time() < deadline and max(seen, default=0) < 2:
        seen.append(len(_replica_pids()))
        time.sleep(0.5)
    time.sleep(3)  # requests answered by both replicas
    stop.set()
    for c in clients:
        c.join(timeout=120)
    assert max(seen) == 2, f"no second replica within 120 s of load: {seen}"
    assert len(codes) >= 8 and set(codes) == {200}, codes
    _wait_for_replicas(1, "the second replica stayed after the load")


def _wait_for_replicas(count: int, failure: str = "", seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and len(_replica_pids()) != count:
        time.sleep(0.5)
    assert len(_replica_pids()) == count, failure or f"{len(_replica_pids())} replica processes, not {count}"


def test_the_cluster_config_is_a_valid_serve_config_and_builds():
    """deploy/serve.yaml against Ray Serve's own schema, and its applications' args through app_builder."""
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from dbunet.serve.app import app_builder

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert [a.name for a in schema.applications] == ["dbunet-cpu", "dbunet-gpu"]
    for app in config["applications"]:
        assert app["import_path"] == "dbunet.serve.app:app_builder"
        assert app_builder(app["args"]) is not None
    with pytest.raises(ValueError, match="unknown dbunet-serve args"):
        app_builder({"artifacts": "x", "replica": 2})
    from dbunet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"whole_loops \(--whole-loops\) must be true, false or null"):
        app_builder({"artifacts": "x", "whole_loops": "yes"})
    with pytest.raises(ConfigError, match="backend trt always runs each denoising loop"):
        app_builder({"artifacts": "x", "backend": "trt", "whole_loops": False})
    with pytest.raises(ConfigError, match="unknown precision 'int8'; valid: fp32, fp16, bf16"):
        app_builder({"artifacts": "x", "precision": "int8"})
    with pytest.raises(ConfigError, match="backend openvino computes in fp32 or bf16, not fp16"):
        app_builder({"artifacts": "x", "backend": "openvino", "precision": "fp16"})
    # the value rules dbunet-serve's flags had alone before, for a config file's args too (YAML checks no value)
    for args, says in (({"replicas": 0}, r"replicas \(--replicas\) must be an integer >= 1, got 0"),
                       ({"autoscale": [4, 2]}, "autoscale .* must be MIN:MAX with 1 <= MIN <= MAX"),
                       ({"autoscale": [1, 2], "scale_delays": [-1, 5]}, "scale_delays .* each in 0..86400"),
                       ({"num_cpus": "4"}, "num_cpus .* must be a positive finite number, got '4'"),
                       ({"num_gpus": float("nan")}, "num_gpus .* must be a finite number >= 0"),
                       ({"max_queued": -1}, "max_queued .* must be an integer >= 0"),
                       ({"max_ongoing": True}, "max_ongoing .* must be an integer >= 1, got True")):
        with pytest.raises(ConfigError, match=says):
            app_builder({"artifacts": "x", **args})
    # before: a KeyError, a TypeError about os.PathLike, "'int' object is not iterable"
    for args, says in (({}, r"artifacts \(--artifacts\) must be the path of the directory dbunet-export wrote, got "
                            "None"),
                       ({"artifacts": 5}, "artifacts .* got 5"),
                       ({"artifacts": "x", "autoscale": 3}, r"autoscale \(--autoscale\) must be a list \[MIN, MAX\], "
                                                            "got 3"),
                       ({"artifacts": "x", "autoscale": [1, 2], "scale_delays": "10:20"},
                        r"scale_delays \(--scale-delays\) must be a list \[UP, DOWN\], got '10:20'")):
        with pytest.raises(ConfigError, match=says):
            app_builder(args)
