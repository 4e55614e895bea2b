"""The MONAI Label server under concurrent load (issue 15, finding 7).

One inference worker per model batches concurrent requests (:class:`cxrkit.serve.batching.BatchQueue`); the
server runs infer requests off its event loop (``/info/`` keeps answering), admits a bounded number (503 with
``Retry-After`` beyond); the load benchmark (``python -m cxrkit.bench.label_load``, run by CI with 50 clients)
measures it. No timing is asserted here: the benchmark reports speed.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from cxrkit.serve.batching import BatchQueue, QueueClosedError, QueueFullError, QueueSettings


def _settings(**kwargs) -> QueueSettings:
    return QueueSettings(**{"max_batch": 8, "max_wait_ms": 50.0, "max_queue": 64, "threads": None, **kwargs})


def test_concurrent_requests_are_answered_from_shared_batches():
    shapes = []

    def forward(images: torch.Tensor) -> torch.Tensor:
        shapes.append(images.shape[0])
        return images.flatten(1).sum(1, keepdim=True) * 2  # each row from its own image only

    queue = BatchQueue(forward, _settings(max_batch=8, max_wait_ms=200.0))
    answers: dict[int, float] = {}
    start = threading.Barrier(12)

    def client(i: int) -> None:
        start.wait()
        answers[i] = float(queue.submit(torch.full((1, 2, 2), float(i)))[0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    queue.close()
    assert answers == {i: 8.0 * i for i in range(12)}  # every request got its own row
    assert queue.answered == 12 and queue.batches == len(shapes) < 12 and max(shapes) <= 8  # batched, bounded


def test_a_full_queue_is_refused_at_once_with_retry_after_and_errors_reach_every_waiter():
    release = threading.Event()
    calls = []

    def blocked(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape[0])
        release.wait(30)
        if len(calls) > 1:
            raise RuntimeError("model failed")
        return images.flatten(1)

    queue = BatchQueue(blocked, _settings(max_batch=1, max_wait_ms=0.0, max_queue=2))
    results: list = []

    def client() -> None:
        try:
            results.append(queue.submit(torch.zeros(1, 1, 1)))
        except Exception as exc:  # noqa: BLE001 - collected for the asserts
            results.append(exc)

    threads = [threading.Thread(target=client) for _ in range(3)]  # 1 in the forward pass, 2 waiting
    for t in threads:
        t.start()
        time.sleep(0.2)  # let each reach the queue in turn (ordering only)
    with pytest.raises(QueueFullError, match="2 requests are waiting") as refused:
        queue.submit(torch.zeros(1, 1, 1))
    assert refused.value.retry_after >= 1
    release.set()
    for t in threads:
        t.join(30)
    assert sum(isinstance(r, torch.Tensor) for r in results) == 1
    assert [str(r) for r in results if isinstance(r, Exception)] == ["model failed"] * 2
    queue.close()
    with pytest.raises(QueueClosedError):
        queue.submit(torch.zeros(1, 1, 1))


def test_the_worker_uses_the_configured_torch_threads_and_settings_come_from_the_environment():
    seen = []
    queue = BatchQueue(lambda x: (seen.append(torch.get_num_threads()), x)[1], _settings(threads=1))
    queue.submit(torch.zeros(1))
    queue.close()
    assert seen == [1]
    env = {"CXRKIT_INFER_MAX_BATCH": "4", "CXRKIT_INFER_MAX_WAIT_MS": "2", "CXRKIT_INFER_MAX_QUEUE": "9",
           "CXRKIT_INFER_THREADS": "2"}
    assert QueueSettings.from_env(env) == QueueSettings(4, 2.0, 9, 2)
    with pytest.raises(ValueError, match="CXRKIT_INFER_MAX_QUEUE must be >= 1"):
        QueueSettings.from_env({"CXRKIT_INFER_MAX_QUEUE": "0"})


def test_admission_refuses_beyond_its_bound_with_retry_after():
    pytest.importorskip("monailabel", reason="MONAI Label is not installed: pip install -e \".[label]\"")
    from fastapi import HTTPException

    from cxrkit.label.asgi import Admission

    admission = Admission(max_pending=2, threads=2, retry_after=3)
    with admission.admit(), admission.admit():
        with pytest.raises(HTTPException) as refused:
            with admission.admit():
                pass
        assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "3"}
    assert admission.pending == 0


# ---- the real server -----------------------------------------------------------------------------------------
def _post(url: str, token: str, timeout: float = 120.0) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, data=b"params=%7B%7D", method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded",
                                              "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def slow_server(tiny_run, tmp_path_factory):
    """The label server on the tiny run whose inference worker waits 3 s to fill a batch and admits 2 requests."""
    from support.label import make_studies, require_label_python

    from cxrkit.label.background import BackgroundServer

    python = require_label_python()
    work = tmp_path_factory.mktemp("slow-server")
    studies = make_studies(work / "studies", per_class=2, dicom=False)
    server = BackgroundServer([tiny_run], studies, work, python=python,
                              env={"CXRKIT_INFER_MAX_WAIT_MS": "3000", "CXRKIT_INFER_MAX_QUEUE": "2"}).start()
    yield server, tiny_run.name, sorted(p.stem for p in studies.glob("*.png"))
    server.stop()


def test_info_answers_while_an_infer_request_is_in_flight(slow_server):
    """Before: MONAI Label ran every infer request on its event loop, so /info/ waited for it."""
    server, model, images = slow_server
    done = threading.Event()
    answer: list = []
    infer = threading.Thread(target=lambda: (answer.append(_post(f"{server.url}/infer/{model}?image={images[0]}"
                                                                 "&output=json", server.token)), done.set()))
    infer.start()
    time.sleep(1.0)  # the request is now waiting for its batch (3 s)
    with urllib.request.urlopen(urllib.request.Request(f"{server.url}/info/", headers=server.headers),
                                timeout=60) as info:
        assert info.status == 200 and model in json.load(info)["models"]
    assert not done.is_set(), "/info/ was answered only after the infer request"
    infer.join(60)
    assert answer[0][0] == 200 and answer[0][2]["predicted"]["label"] in ("COVID", "Normal")


def test_requests_beyond_the_bound_get_503_with_retry_after(slow_server):
    server, model, images = slow_server
    results: list = []
    threads = [threading.Thread(target=lambda i=i: results.append(
        _post(f"{server.url}/infer/{model}?image={images[i % len(images)]}&output=json", server.token)))
        for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    statuses = sorted(r[0] for r in results)
    assert len(results) == 6 and set(statuses) <= {200, 503} and statuses.count(200) >= 1
    refused = [r for r in results if r[0] == 503]
    assert refused, f"no request was refused: {statuses}"
    assert all(int(r[1]["retry-after"] if "retry-after" in r[1] else r[1]["Retry-After"]) >= 1 for r in refused)
    assert all("waiting" in r[2]["detail"] for r in refused)


def test_the_load_benchmark_measures_the_server(label_server):
    """The benchmark's measurement on the shared server, small: everything answered, /info/ watched, the
    model's inference worker batched (CI runs the full 50-client load test)."""
    from cxrkit.bench.label_load import TARGETS, markdown, measure
    from cxrkit.bench.report import check_targets
    from cxrkit.label.app.lib.bundles import model_name

    server, run, studies = label_server
    images = sorted(p.stem for p in studies.glob("*.png"))
    results = measure(server.url, server.process.pid, model_name(run.resolve()), images, clients=8, requests=40,
                      sequential=5, deadline_s=120, token=server.token)
    assert results["sequential"]["answered"] == 5 and results["sequential"]["failed"] == 0
    many = results["concurrent"]
    assert many["answered"] == 40 and many["failed"] == 0 and many["unanswered"] == 0
    assert many["mean_batch"] >= 1.0 and results["info"]["requests"] >= 1 and results["info"]["failed"] == 0
    assert results["memory"]["before_mb"] > 0 and results["memory"]["after_mb"] > 0
    results["settings"] = {"machine": "test", "monailabel": "0.8.5", "model": run.name, "image_size": 32,
                           "studies": len(images), "queue": "default", "clients": 8, "requests": 40,
                           "deadline_s": 120}
    results["targets"] = check_targets(results, TARGETS)
    assert [row["target"] for row in results["targets"]] == ["throughput", "answered", "info", "memory"]
    assert "| under load | 8 | 40 | 40 | 0 | 0 |" in markdown(results)
