"""CrunchDAO's coordinator client (PyPI model-runner-client, unchanged)
against our stack, for the scheduler's TestCrunchDAOClientOnOurStack: their
DynamicSubclassModelConcurrentRunner finds the crunch's models through the
orchestrator WebSocket (scheduler/orchws), sets each up and fans calls out
to the runners Nomad runs.

Usage: theirclient.py HOST PORT CRUNCH ORCH_CA COORD_CERT COORD_KEY [CREDS_DIR]

With CREDS_DIR (ca.crt, tls.crt, tls.key) the runner connects in their
secure mode (SecureCredentials: mTLS, the runner's RSA certificate named
model-node-<model_id>.crunchdao.internal, the cruncher's wallet delegation
checked on every call); without it, in plaintext.

Prints one JSON line {"models": [model ids]} after init and whenever the
cluster's set changes. A line "call" on stdin fans add(2, 40) out and prints
{"call": {model_id: [status, result, detail]}}.

Their WebsocketClient hard-codes ws:// and passes no TLS context to
websockets.connect, so the one thing swapped is that transport: the same
URL over wss://, with the coordinator's client certificate (as
scheduler/orchws/testdata/cluster.py does).
"""

import asyncio
import json
import ssl
import sys

import websockets
from model_runner_client import websocket_client
from model_runner_client.grpc.generated.commons_pb2 import Argument, Variant, VariantType
from model_runner_client.model_concurrent_runners.dynamic_subclass_model_concurrent_runner import (
    DynamicSubclassModelConcurrentRunner,
)
from model_runner_client.security.credentials import SecureCredentials
from model_runner_client.utils.datatype_transformer import encode_data

host, port, crunch, orch_ca, cert_file, key_file = sys.argv[1:7]
creds_dir = sys.argv[7] if len(sys.argv) > 7 else None

tls = ssl.create_default_context(cafile=orch_ca)
tls.load_cert_chain(cert_file, key_file)
_connect = websockets.connect


def connect(uri, **kwargs):
    return _connect(uri.replace("ws://", "wss://", 1), ssl=tls, **kwargs)


websocket_client.websockets.connect = connect


def arg(position, value):
    return Argument(position=position, data=Variant(type=VariantType.INT, value=encode_data(VariantType.INT, value)))


async def main():
    runner = DynamicSubclassModelConcurrentRunner(
        timeout=10,
        crunch_id=crunch,
        host=host,
        port=int(port),
        base_classname="tracker.Base",
        secure_credentials=SecureCredentials.from_directory(creds_dir) if creds_dir else None,
        # The test watches what happens; a report would not change it here.
        report_failure=False,
    )
    await runner.init()
    asyncio.create_task(runner.sync())

    def models():
        return sorted(runner.model_cluster.models_run.keys())

    last = models()
    print(json.dumps({"models": last}), flush=True)
    loop = asyncio.get_running_loop()
    lines = asyncio.Queue()

    def read():
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.strip())
        loop.call_soon_threadsafe(lines.put_nowait, None)

    loop.run_in_executor(None, read)
    while True:
        try:
            line = await asyncio.wait_for(lines.get(), 0.02)
        except asyncio.TimeoutError:
            line = ""
        if line is None:
            return
        if line == "call":
            results = await runner.call("add", ([arg(0, 2), arg(1, 40)], []))
            print(json.dumps({"call": {
                r.model_runner.model_id: [r.status.value, r.result, r.detail] for r in results.values()
            }}), flush=True)
        now = models()
        if now != last:
            print(json.dumps({"models": now}), flush=True)
            last = now


asyncio.run(main())
