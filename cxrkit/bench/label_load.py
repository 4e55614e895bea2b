"""``python -m cxrkit.bench.label_load``: the real MONAI Label server under many concurrent clients.

Starts ``cxrkit label serve``'s server (MONAI Label with cxrkit's app, loopback only) on a run folder and a
studies folder, then measures, in one run on the same machine:

1. one client sending infer requests one at a time (the reference throughput);
2. ``--clients`` clients (default 50) sending ``--requests`` infer requests (default 300) as fast as answered,
   within ``--deadline`` seconds: throughput, p50/p95 latency, failed and unanswered requests, and the mean
   batch of the model's inference worker (from ``/info/``);
3. ``GET /info/`` every half second during the load (it must keep answering);
4. the server's resident memory before, at its peak and after the load.

Without ``--run_dir`` it first makes a 64 px synthetic dataset (:func:`cxrkit.demo.make_synthetic_dataset`) and
trains the ``random`` bundle on it for one epoch (random weights: the speed, not the accuracy, is measured).
Writes ``label_load.json`` and ``label_load.md`` into ``--output_dir``, prints the table, and exits 1 when a
target fails:

* throughput under load >= one-at-a-time throughput;
* no failed and no unanswered request;
* ``/info/`` answers within 1 s throughout;
* memory after the load within 25 % (+ 64 MB) of before.

Example::

    python -m cxrkit.bench.label_load --output_dir bench-label --clients 50 --requests 300
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

from cxrkit.bench.report import Target, check_targets, fmt

__all__ = ["TARGETS", "build_parser", "main", "measure", "prepare", "markdown"]

logger = logging.getLogger("cxrkit.bench.label_load")

#: the load test's targets.
TARGETS: tuple[Target, ...] = (
    Target("throughput", "throughput under load >= one at a time",
           lambda r: r["concurrent"]["throughput"] / r["sequential"]["throughput"], lambda v: v >= 1.0),
    Target("answered", "failed + unanswered requests = 0",
           lambda r: r["concurrent"]["failed"] + r["concurrent"]["unanswered"], lambda v: v == 0),
    Target("info", "/info/ answers within 1 s during the load (slowest, s)",
           lambda r: r["info"]["max_s"], lambda v: v < 1.0),
    Target("memory", "memory after the load <= 1.25 x before + 64 MB (after / limit)",
           lambda r: r["memory"]["after_mb"] / (1.25 * r["memory"]["before_mb"] + 64.0), lambda v: v <= 1.0),
)


# ---- the server and its model ----------------------------------------------------------------------------
def prepare(workdir: Path, image_size: int = 64, per_class: int = 10) -> tuple[Path, Path]:
    """A one-epoch random-weights run folder and a studies folder of synthetic radiographs: ``(run, studies)``."""
    from cxrkit.bundle.runner import run_bundle
    from cxrkit.demo import make_synthetic_dataset

    data = make_synthetic_dataset(workdir / "data", per_class=per_class, size=image_size)
    studies = workdir / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    for image in sorted(data.glob("*/*.png")):
        shutil.copy2(image, studies / image.name)
    logger.info("training a 1-epoch %d px random-weights run on %d synthetic images", image_size, 2 * per_class)
    run = run_bundle("training", "random", {
        "dataset_dir": str(data), "image_size": image_size, "epochs": 1, "batch_size": 8, "device": "cpu",
        "output_dir": str(workdir / "run"), "progress": False, "tensorboard_images": 0, "near_duplicates": False,
    })
    assert run is not None
    return run, studies


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB."""
    try:
        import psutil

        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 1e6
    except ImportError:  # pragma: no cover - psutil comes with MONAI Label's dependencies
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


# ---- clients --------------------------------------------------------------------------------------------------
class _Client:
    """One keep-alive HTTP connection to the server."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        parts = urlsplit(url)
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.host, self.port, self.timeout = parts.hostname or "127.0.0.1", parts.port or 80, timeout
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float | None = None) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        elif timeout is not None and self.conn.sock is not None:
            self.conn.sock.settimeout(timeout)
        try:
            self.conn.request(method, path, body=body, headers={**self.auth, **(headers or {})})
            answer = self.conn.getresponse()
            return answer.status, answer.read()
        except BaseException:
            self.close()
            raise

    def infer(self, model: str, image: str, timeout: float | None = None) -> tuple[int, bytes]:
        body = b"params=%7B%7D"  # params={}
        return self.call("POST", f"/infer/{model}?image={image}&output=json", body,
                         {"Content-Type": "application/x-www-form-urlencoded"}, timeout)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))]


def _summary(latencies: list[float], elapsed: float, requests: int) -> dict[str, Any]:
    return {"requests": requests, "answered": len(latencies), "elapsed_s": round(elapsed, 3),
            "throughput": round(len(latencies) / elapsed, 3) if elapsed > 0 else 0.0,
            "p50_s": _percentile(latencies, 50), "p95_s": _percentile(latencies, 95),
            "max_s": max(latencies) if latencies else None}


def _sequential(url: str, token: str | None, model: str, images: list[str], requests: int) -> dict[str, Any]:
    client, latencies, failed = _Client(url, token, 60.0), [], 0
    started = time.monotonic()
    for i in range(requests):
        t = time.monotonic()
        status, body = client.infer(model, images[i % len(images)])
        if status == 200 and b"prediction" in body:
            latencies.append(time.monotonic() - t)
        else:
            failed += 1
    client.close()
    result = _summary(latencies, time.monotonic() - started, requests)
    result["failed"] = failed
    return result


def _concurrent(url: str, token: str | None, model: str, images: list[str], clients: int, requests: int,
                deadline_s: float) -> dict[str, Any]:
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    started = time.monotonic()
    deadline = started + deadline_s

    def worker() -> None:
        client = _Client(url, token, deadline_s)
        while True:
            with lock:
                if issued[0] >= requests or time.monotonic() >= deadline:
                    break
                n = issued[0]
                issued[0] += 1
            t = time.monotonic()
            try:
                status, body = client.infer(model, images[n % len(images)], timeout=max(0.1, deadline - t))
                problem = None if status == 200 and b"prediction" in body else f"HTTP {status}"
            except OSError as exc:  # timeouts included: the request is unanswered
                problem = "no answer" if time.monotonic() >= deadline else type(exc).__name__
            with lock:
                if problem is None:
                    latencies.append(time.monotonic() - t)
                elif problem != "no answer":
                    errors[problem] = errors.get(problem, 0) + 1
        client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5.0)
    elapsed = time.monotonic() - started
    with lock:
        result = _summary(list(latencies), elapsed, requests)
        result["failed"] = sum(errors.values())
        result["errors"] = dict(errors)
        result["unanswered"] = requests - len(latencies) - result["failed"]
    result["clients"] = clients
    return result


class _Monitor(threading.Thread):
    """``GET /info/`` every ``interval`` seconds (a fresh connection each time) and the server's memory."""

    def __init__(self, url: str, token: str | None, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.pid, self.interval = url, token, pid, interval
        self.latencies: list[float] = []
        self.failures = 0
        self.peak_mb = 0.0
        self.info: dict[str, Any] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            client = _Client(self.url, self.token, 10.0)
            t = time.monotonic()
            try:
                status, body = client.call("GET", "/info/")
                took = time.monotonic() - t
                if status == 200:
                    self.info = json.loads(body)
                else:
                    self.failures += 1
            except OSError:
                took = time.monotonic() - t
                self.failures += 1
            client.close()
            self.latencies.append(took)
            self.peak_mb = max(self.peak_mb, _rss_mb(self.pid))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(15)


# ---- the measurement --------------------------------------------------------------------------------------------
def measure(url: str, pid: int, model: str, images: list[str], clients: int = 50, requests: int = 300,
            sequential: int = 30, deadline_s: float = 120.0, token: str | None = None) -> dict[str, Any]:
    """Warm up, then one client one request at a time, then ``clients`` at once, ``/info/`` watched throughout.

    Args:
        url: the server.
        pid: the server's process (for its memory).
        model: the model name on the server.
        images: image ids of the datastore, used in turn.
        clients: concurrent clients.
        requests: infer requests under load.
        sequential: requests of the one-at-a-time phase.
        deadline_s: the load phase's time limit; requests not answered by then count as unanswered.
        token: the server's bearer token, sent with every request.
    """
    warm = _Client(url, token, 120.0)
    for image in images[:3]:  # the first request loads the model
        warm.infer(model, image)
    warm.close()
    before_mb = _rss_mb(pid)
    logger.info("one client, %d requests one at a time", sequential)
    one = _sequential(url, token, model, images, sequential)
    monitor = _Monitor(url, token, pid)
    monitor.start()
    logger.info("%d clients, %d requests (deadline %.0f s)", clients, requests, deadline_s)
    many = _concurrent(url, token, model, images, clients, requests, deadline_s)
    time.sleep(1.0)
    monitor.stop()
    time.sleep(2.0)  # let the server settle
    after_mb = _rss_mb(pid)
    queues = monitor.info.get("models", {}).get(model, {}).get("cxrkit", {}).get("queue", {})
    queue = next(iter(queues.values()), {})
    if queue.get("batches"):
        many["mean_batch"] = round(queue["answered"] / queue["batches"], 2)
    return {
        "sequential": one,
        "concurrent": many,
        "info": {"requests": len(monitor.latencies), "failed": monitor.failures,
                 "max_s": max(monitor.latencies) if monitor.latencies else None,
                 "p95_s": _percentile(monitor.latencies, 95),
                 "median_s": statistics.median(monitor.latencies) if monitor.latencies else None},
        "memory": {"before_mb": round(before_mb, 1), "peak_mb": round(max(monitor.peak_mb, after_mb), 1),
                   "after_mb": round(after_mb, 1)},
    }


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    s, one, many = results["settings"], results["sequential"], results["concurrent"]
    info, memory = results["info"], results["memory"]
    lines = [
        "# cxrkit MONAI Label load test", "",
        f"Machine: {s['machine']}. Server: MONAI Label {s['monailabel']} with cxrkit's app on 127.0.0.1, model "
        f"{s['model']} ({s['image_size']} px, {s['studies']} studies); inference queue {s['queue']}.", "",
        "| phase | clients | requests | answered | failed | unanswered | requests/s | p50 (s) | p95 (s) | "
        "mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| one at a time | 1 | {one['requests']} | {one['answered']} | {one['failed']} | 0 | "
        f"{fmt(one['throughput'])} | {fmt(one['p50_s'], 3)} | {fmt(one['p95_s'], 3)} | - |",
        f"| under load | {many['clients']} | {many['requests']} | {many['answered']} | {many['failed']} | "
        f"{many['unanswered']} | {fmt(many['throughput'])} | {fmt(many['p50_s'], 3)} | {fmt(many['p95_s'], 3)} | "
        f"{fmt(many.get('mean_batch'))} |",
        "",
        f"`/info/` during the load: {info['requests']} requests, median {fmt(info['median_s'], 3)} s, p95 "
        f"{fmt(info['p95_s'], 3)} s, slowest {fmt(info['max_s'], 3)} s, {info['failed']} failed.", "",
        f"Server memory (RSS): {fmt(memory['before_mb'], 0)} MB before, {fmt(memory['peak_mb'], 0)} MB at the "
        f"peak, {fmt(memory['after_mb'], 0)} MB after.", "",
        "## Targets", "", "| target | value | status |", "|---|---|---|",
    ]
    for row in results["targets"]:
        lines.append(f"| {row['description']} | {fmt(row['value'], 3)} | {row['status']} |")
    return "\n".join(lines) + "\n"


# ---- command line ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The load test's options (cxrkit's vocabulary)."""
    from cxrkit.options import CommandFormatter, add_common, add_option, arg_type, integer, number

    parser = argparse.ArgumentParser(prog="python -m cxrkit.bench.label_load", formatter_class=CommandFormatter,
                                     description=__doc__.splitlines()[0].split(": ", 1)[1])
    positive = arg_type(integer, minimum=1)
    add_common(parser, "output_dir", default="bench-label",
               help="folder for label_load.json and label_load.md (default: bench-label)")
    add_option(parser, "--clients", type=positive, default=50, metavar="N", help="concurrent clients (default: 50)")
    add_option(parser, "--requests", type=positive, default=300, metavar="N",
               help="infer requests under load (default: 300)")
    add_option(parser, "--sequential", type=positive, default=30, metavar="N",
               help="requests sent one at a time first (default: 30)")
    add_option(parser, "--deadline", type=arg_type(number, minimum=1.0), default=120.0, metavar="S",
               help="time limit of the load phase in seconds; later answers count as unanswered (default: 120)")
    add_common(parser, "image_size", default=64, help="image size of the synthetic run (default: 64)")
    add_option(parser, "--run_dir", default=None, metavar="RUN_DIR",
               help="serve this run folder instead of training a synthetic one (needs --studies)")
    add_option(parser, "--studies", default=None, metavar="DIR", help="the studies folder for --run_dir")
    add_option(parser, "--work_dir", default=None, metavar="DIR",
               help="where the synthetic data, run and server files go (default: a temporary folder)")
    return parser


def _image_size(run: Path) -> int | None:
    """The served model's input size (metadata ``spatial_shape``)."""
    try:
        meta = json.loads((run / "configs" / "metadata.json").read_text())
        return int(next(iter(meta["network_data_format"]["inputs"].values()))["spatial_shape"][0])
    except (OSError, ValueError, KeyError, StopIteration, IndexError, TypeError):
        return None


def _load_test(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from importlib.metadata import version

    from cxrkit.label.background import BackgroundServer
    from cxrkit.serve.batching import QueueSettings

    if args.run_dir:
        if not args.studies:
            raise ValueError("--run_dir needs --studies DIR (the radiographs to serve)")
        run, studies = Path(args.run_dir), Path(args.studies)
    else:
        run, studies = prepare(workdir, image_size=args.image_size)
    images = sorted({p.stem for p in studies.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm")})
    if not images:
        raise ValueError(f"--studies {studies}: no PNG, JPEG or DICOM file")
    server = BackgroundServer([run], studies, workdir / "server").start()
    try:
        from cxrkit.label.app.lib.bundles import model_name

        model = model_name(run.resolve())
        results = measure(server.url, server.process.pid, model, images, clients=args.clients,
                          requests=args.requests, sequential=args.sequential, deadline_s=args.deadline,
                          token=server.token)
    finally:
        server.stop()
    queue = QueueSettings.from_env()
    results["settings"] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "monailabel": version("monailabel"),
        "model": model, "image_size": _image_size(run), "studies": len(images),
        "queue": f"max batch {queue.max_batch}, wait {queue.max_wait_ms:g} ms, {queue.max_queue} waiting at most",
        "clients": args.clients, "requests": args.requests, "deadline_s": args.deadline,
    }
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load test; 1 when a target fails, 2 for bad options or a missing MONAI Label."""
    from cxrkit.atomic import atomic_write_json, atomic_write_text
    from cxrkit.label.server import LabelServerError, monailabel_available

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if not monailabel_available():
        print('error: MONAI Label is not installed (pip install -e ".[label]")', file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.work_dir:
            Path(args.work_dir).mkdir(parents=True, exist_ok=True)
            results = _load_test(args, Path(args.work_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="cxrkit-label-load-") as tmp:
                results = _load_test(args, Path(tmp))
    except (ValueError, LabelServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results["targets"] = check_targets(results, TARGETS)
    out = Path(args.output_dir)
    atomic_write_json(out / "label_load.json", results)
    atomic_write_text(out / "label_load.md", markdown(results))
    print(markdown(results))
    print(f"wrote {out / 'label_load.json'} and {out / 'label_load.md'}")
    failed = [row["target"] for row in results["targets"] if row["status"] == "FAIL"]
    if failed:
        print(f"FAILED targets: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
