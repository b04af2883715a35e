"""Benchmark of the ML classifier.

1. Batch classification on ONE core (sched_setaffinity to CPU 0; OMP/OpenBLAS threads 1): the
   active-model path the pipeline uses, `predict_batch` on batches of 1,000 events drawn from the
   shipped data set (features + both calibrated ensembles + metrics), against same-run baselines:
   the rules classifier and a bare logistic regression (same features, one model, no calibration).
   The held-out set has 2,016 rows, so no event repeats within a batch: the feature path's
   per-batch memoisation only profits from what real batches repeat (sources, event types, tags).
   Each figure also per CPU second of the process (steadier on a shared machine; the target is
   read on the wall-clock figure).
2. Single-event `POST /api/v1/ml/classify` latency through the Flask app (in-process WSGI client:
   auth with a real API key against Postgres, rate limiter in Redis, schema validation, the
   registry's cached active model, JSON out), sequential requests, p50/p95/p99.

    flock /tmp/im-bench.lock .venv/bin/python -m bench.ml [--events 50000] [--requests 2000]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from ml.interface import ClassifierInput  # noqa: E402


def _throughput(predict: Callable[[Sequence[ClassifierInput]], Any], events: Sequence[ClassifierInput],
                batch: int, rounds: int) -> tuple[list[float], list[float]]:
    """Events per wall-clock second and per CPU second of this process, each round. On a shared
    machine the CPU figure is the steadier one (waiting for the core is not counted)."""
    predict(events[:batch])  # warm caches
    wall, cpu = [], []
    for _ in range(rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(events), batch):
            predict(events[start:start + batch])
        wall.append(len(events) / (time.perf_counter() - started))
        cpu.append(len(events) / (time.process_time() - started_cpu))
    return wall, cpu


def batch_bench(events_count: int, batch: int, rounds: int) -> dict[str, Any]:
    from ml.classifier import train_classifier
    from ml.rules import RulesClassifier
    from ml.training import load_shipped

    os.sched_setaffinity(0, {0})
    train, held_out = load_shipped()
    started = time.perf_counter()
    model = train_classifier("bench", train.inputs, train.severities, train.categories)
    training_seconds = time.perf_counter() - started
    events = (held_out.inputs * (events_count // len(held_out.inputs) + 1))[:events_count]
    from ml.training import evaluate

    quality = evaluate(model, held_out)
    rules_quality = evaluate(RulesClassifier(), held_out)

    bare = LogisticRegression(C=8.0, max_iter=2000).fit(model.extractor.transform(train.inputs).sparse,
                                                        train.severities)

    def bare_predict(items: Sequence[ClassifierInput]) -> Any:
        views = model.extractor.transform(items)
        probabilities = bare.predict_proba(views.sparse)
        return probabilities.argmax(axis=1), probabilities.max(axis=1)

    ensemble, ensemble_cpu = _throughput(model.predict_batch, events, batch, rounds)
    rules, rules_cpu = _throughput(RulesClassifier().predict_batch, events, batch, rounds)
    logistic, logistic_cpu = _throughput(bare_predict, events, batch, rounds)
    best = max(ensemble)
    return {
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "events": events_count, "batch": batch, "rounds": rounds,
        "training_seconds": round(training_seconds, 1),
        "held_out_severity_macro_f1": quality["severity_macro_f1"],
        "held_out_category_macro_f1": quality["category_macro_f1"],
        "held_out_expected_calibration_error": quality["expected_calibration_error"],
        "rules_held_out_severity_macro_f1": rules_quality["severity_macro_f1"],
        "ensemble_events_per_s": [round(v) for v in ensemble],
        "rules_events_per_s": [round(v) for v in rules],
        "bare_logreg_events_per_s": [round(v) for v in logistic],
        "ensemble_events_per_cpu_s": [round(v) for v in ensemble_cpu],
        "rules_events_per_cpu_s": [round(v) for v in rules_cpu],
        "bare_logreg_events_per_cpu_s": [round(v) for v in logistic_cpu],
        "ensemble_best": round(best),
        "ratio_ensemble_to_rules": round(best / max(rules), 2),
        "ratio_ensemble_to_bare_logreg": round(best / max(logistic), 2),
        "target_events_per_s": 15000,
        "meets_target": best >= 15000,
        "model": model,
    }


def api_bench(model: Any, requests: int) -> dict[str, Any]:
    from bench.common import make_environment

    environment = make_environment()
    try:
        os.environ.update(environment.env)
        from app.config import reset_settings_cache

        reset_settings_cache()
        from api import create_app
        from app.services.auth import create_api_key
        from ml import registry
        from ml.training import load_shipped

        model.version = "bench-1"
        registry.store_version(model, training_size=0, feedback_samples=0, metrics={}, score=0.0, actor="bench")
        registry.activate("bench-1", actor="bench")
        key = create_api_key("bench", ["event:create"], 0, None).key
        client = create_app().test_client()
        _, held_out = load_shipped()
        bodies = []
        for item in held_out.inputs[:requests]:
            body = {"title": item.title, "description": item.description, "source": item.source,
                    "severity": item.source_severity or "info", "tags": dict(item.tags), "metrics": dict(item.metrics)}
            if item.event_type:
                body["event_type"] = item.event_type
            bodies.append(json.dumps(body))
        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        for text in bodies[:50]:  # warm-up: key cache, model load
            client.post("/api/v1/ml/classify", data=text, headers=headers)
        latencies = []
        for text in (bodies * (requests // len(bodies) + 1))[:requests]:
            started = time.perf_counter()
            response = client.post("/api/v1/ml/classify", data=text, headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"classify answered {response.status_code}: {response.get_data(as_text=True)}")
        ordered = np.sort(np.array(latencies))
        return {
            "requests": requests,
            "p50_ms": round(float(np.percentile(ordered, 50)), 2),
            "p95_ms": round(float(np.percentile(ordered, 95)), 2),
            "p99_ms": round(float(np.percentile(ordered, 99)), 2),
            "mean_ms": round(statistics.fmean(latencies), 2),
            "target_p95_ms": 30,
            "meets_target": float(np.percentile(ordered, 95)) < 30,
        }
    finally:
        environment.close()


def _batch_bodies(batch: int) -> list[bytes]:
    """`{"events": [...]}` bodies of `batch` held-out events each (as senders would post them)."""
    from ml.training import load_shipped

    _, held_out = load_shipped()
    events = []
    for item in held_out.inputs:
        body: dict[str, Any] = {"title": item.title, "description": item.description, "source": item.source,
                                "severity": item.source_severity or "info", "tags": dict(item.tags),
                                "metrics": dict(item.metrics)}
        if item.event_type:
            body["event_type"] = item.event_type
        if item.resource_type:
            body["resource"] = {"type": item.resource_type}
        events.append(body)
    return [json.dumps({"events": events[start:start + batch]}).encode()
            for start in range(0, len(events) - batch + 1, batch)]


def http_batch_bench(model: Any, batch: int, seconds: float) -> dict[str, Any]:
    """`POST /api/v1/ml/classify` with `{"events": [batch]}` through gunicorn (the Procfile's web:
    api.gunicorn_conf, WEB_CONCURRENCY=2), closed loop from 2 client processes x 2 threads, against
    same-run baselines on the same bodies in this process: the use case alone (`classify_events`:
    features, model, policy; what the request path adds nothing to) and the schema validation the
    request path used before its fast path (marshmallow, ~70 % of a request when profiled)."""
    from bench.common import Server, make_environment, run_load

    bodies = _batch_bodies(batch)
    environment = make_environment()
    server = None
    try:
        os.environ.update(environment.env)
        from app.config import reset_settings_cache

        reset_settings_cache()
        from api.rest.ml import EVENT, _inputs
        from app.services.auth import create_api_key
        from app.services.classification import classify_events
        from ml import registry

        model.version = "bench-http"
        registry.store_version(model, training_size=0, feedback_samples=0, metrics={}, score=0.0, actor="bench")
        registry.activate("bench-http", actor="bench")
        registry.reset_cache()
        key = create_api_key("bench", ["event:create"], 0, None).key
        decoded = [json.loads(body) for body in bodies]

        def use_case(rounds: int = 3) -> float:
            started = time.perf_counter()
            for body in decoded[:rounds]:
                classify_events(_inputs(body))
            return rounds * batch / (time.perf_counter() - started)

        def schema_only(rounds: int = 3) -> float:
            started = time.perf_counter()
            for body in decoded[:rounds]:
                EVENT.load(body["events"], many=True)
            return rounds * batch / (time.perf_counter() - started)

        use_case(1)  # warm: model load, caches
        in_process = [use_case() for _ in range(3)]
        marshmallow = [schema_only() for _ in range(2)]
        server = Server("api.wsgi:app", environment.env, workers=2, config="python:api.gunicorn_conf")
        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        run_load(server.port, "/api/v1/ml/classify", headers, lambda w, n: bodies[(w + n) % len(bodies)],
                 duration=2.0, processes=1, threads=2)  # warm both workers
        result = run_load(server.port, "/api/v1/ml/classify", headers,
                          lambda w, n: bodies[(w * 7 + n) % len(bodies)], duration=seconds, processes=2, threads=2)
        ok = result.statuses.get(200, 0)
        http_rate = ok * batch / result.elapsed
        return {
            "batch": batch, "seconds": seconds, "requests": result.requests, "statuses": result.statuses,
            "errors": result.errors,
            "http_events_per_s": round(http_rate),
            "p50_ms": round(result.pct(50), 1), "p99_ms": round(result.pct(99), 1),
            "baseline_use_case_in_process_events_per_s": [round(v) for v in in_process],
            "baseline_marshmallow_validation_only_events_per_s": [round(v) for v in marshmallow],
            "ratio_http_to_use_case_in_process": round(http_rate / max(in_process), 2),
            "target_events_per_s": 10000,
            "meets_target": http_rate >= 10000,
        }
    finally:
        if server is not None:
            server.stop()
        environment.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--http-seconds", type=float, default=10.0)
    parser.add_argument("--only-http", action="store_true", help="train, then only the HTTP batch benchmark")
    args = parser.parse_args()
    if args.only_http:
        from ml.classifier import train_classifier
        from ml.training import load_shipped

        train, _ = load_shipped()
        model = train_classifier("bench", train.inputs, train.severities, train.categories)
        print(json.dumps({"http_batch_classify": http_batch_bench(model, args.batch, args.http_seconds)},  # noqa: T201
                         indent=2))
        return
    batch = batch_bench(args.events, args.batch, args.rounds)
    model = batch.pop("model")
    print(json.dumps({"batch_classification": batch}, indent=2))  # noqa: T201 - a benchmark prints its numbers
    print(json.dumps({"single_event_api": api_bench(model, args.requests)}, indent=2))  # noqa: T201
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))  # the HTTP run uses the whole machine
    print(json.dumps({"http_batch_classify": http_batch_bench(model, args.batch, args.http_seconds)},  # noqa: T201
                     indent=2))


if __name__ == "__main__":
    main()
