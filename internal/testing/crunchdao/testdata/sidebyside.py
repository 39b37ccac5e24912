"""CrunchDAO's coordinator client (model-runner-client, unchanged) calling
runners for the side-by-side benchmark. Prints one JSON object.

usage: python sidebyside.py calls ADDR N CONC
           N echo calls to one model from CONC concurrent callers (asyncio
           tasks on the client's one channel), after 200 warm-up calls
       python sidebyside.py fanout ROUNDS ADDR[,ADDR...]
           their concurrent runner: the models announced as their
           orchestrator's init event does, then ROUNDS fan-outs of one call
"""

import asyncio
import json
import sys
import time

from model_runner_client.grpc.generated.commons_pb2 import Argument, Variant, VariantType
from model_runner_client.model_concurrent_runners import DynamicSubclassModelConcurrentRunner
from model_runner_client.model_runners import DynamicSubclassModelRunner

BASE_CLASS = "crunch_base.Tracker"


def echo_argument():
    """The benchmark's argument: a 172-byte JSON object."""
    value = {"f": [i * 0.5 for i in range(27)], "id": ""}
    value["id"] = "x" * (172 - len(json.dumps(value)))
    raw = json.dumps(value).encode()
    assert len(raw) == 172, len(raw)
    return [Argument(position=0, data=Variant(type=VariantType.JSON, value=raw))], []


def percentile(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


async def calls(addr, n, conc):
    host, port = addr.rsplit(":", 1)
    runner = DynamicSubclassModelRunner(BASE_CLASS, deployment_id="bench", model_id="bench", model_name="bench",
                                        ip=host, port=int(port), infos={})
    ok, error = await runner.init()
    if not ok:
        raise SystemExit("setup failed: %s" % error)
    arguments = echo_argument()
    expected = json.loads(arguments[0][0].data.value)
    for _ in range(200):
        result, error = await runner.call("echo", arguments)
        if error is not None or result != expected:
            raise SystemExit("warm-up call: %r %r" % (result, error))
    lat, failed = [], 0

    async def caller(k):
        nonlocal failed
        for _ in range(k):
            t0 = time.perf_counter()
            try:
                result, error = await runner.call("echo", arguments)
            except Exception:  # their client raises gRPC errors (a busy runner's RESOURCE_EXHAUSTED)
                failed += 1
                continue
            if error is not None or result != expected:
                failed += 1
                continue
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(n // conc + (1 if i < n % conc else 0)) for i in range(conc)))
    elapsed = time.perf_counter() - t0
    await runner.close()
    lat.sort()
    if not lat:
        raise SystemExit("no call succeeded (%d failed)" % failed)
    return {"p50_us": percentile(lat, 0.5) * 1e6, "p99_us": percentile(lat, 0.99) * 1e6,
            "calls_s": len(lat) / elapsed, "failed": failed}


async def fanout(rounds, addrs):
    runner = DynamicSubclassModelConcurrentRunner(timeout=10, crunch_id="bench", host="127.0.0.1", port=1,
                                                  base_classname=BASE_CLASS, report_failure=False)
    # What their orchestrator's init event carries; handled by their own
    # ModelCluster code (no WebSocket needed to feed it).
    models = [{"deployment_id": "d%d" % i, "model_id": "m%d" % i, "state": "RUNNING",
               "ip": addr.rsplit(":", 1)[0], "port": int(addr.rsplit(":", 1)[1]),
               "infos": {"model_name": "m%d" % i}} for i, addr in enumerate(addrs)]
    await runner.model_cluster.handle_init_event(models)
    if len(runner.model_cluster.models_run) != len(addrs):
        raise SystemExit("only %d of %d models set up" % (len(runner.model_cluster.models_run), len(addrs)))
    arguments = echo_argument()
    lat, failed = [], 0
    for i in range(rounds + 3):
        t0 = time.perf_counter()
        results = await runner.call("echo", arguments)
        dt = time.perf_counter() - t0
        if i >= 3:
            lat.append(dt)
            failed += len(addrs) - sum(1 for r in results.values() if r.status.name == "SUCCESS")
    await asyncio.gather(*(m.close() for m in runner.model_cluster.models_run.values()))
    lat.sort()
    return {"p50_ms": percentile(lat, 0.5) * 1e3, "p90_ms": percentile(lat, 0.9) * 1e3, "failed": failed}


def main():
    mode = sys.argv[1]
    if mode == "calls":
        out = asyncio.run(calls(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    elif mode == "fanout":
        out = asyncio.run(fanout(int(sys.argv[2]), sys.argv[3].split(",")))
    else:
        raise SystemExit("unknown mode %r" % mode)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
