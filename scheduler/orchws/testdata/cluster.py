"""CrunchDAO's ModelCluster (PyPI model-runner-client, unchanged) against the
orchestrator WebSocket, for orchws's e2e test.

Usage: cluster.py HOST PORT CRUNCH CA_FILE CERT_FILE KEY_FILE

Prints one JSON line with the models the cluster holds after its init, and
one more each time that set changes. A line "report MODEL_ID CODE" on stdin
makes the cluster report that model failed, through its own process_failure.

Their WebsocketClient hard-codes ws:// and passes no TLS context to
websockets.connect, so the one thing swapped here is that transport: the
same URL over wss://, with the coordinator's client certificate. Their
cluster code runs as published.
"""

import asyncio
import json
import ssl
import sys

import websockets
from model_runner_client import websocket_client
from model_runner_client.model_cluster import ModelCluster

host, port, crunch, ca_file, cert_file, key_file = sys.argv[1:7]
tls = ssl.create_default_context(cafile=ca_file)
tls.load_cert_chain(cert_file, key_file)
_connect = websockets.connect


def connect(uri, **kwargs):
    return _connect(uri.replace("ws://", "wss://", 1), ssl=tls, **kwargs)


websocket_client.websockets.connect = connect


class Runner:
    """Stands in for a model runner: the test checks discovery, not calls."""

    def __init__(self, deployment_id, model_id, model_name, ip, port, infos):
        self.deployment_id = deployment_id
        self.model_id = model_id
        self.model_name = model_name
        self.ip = ip
        self.port = port
        self.infos = infos

    async def init(self):
        return True, None

    async def close(self):
        pass


def state(cluster):
    return sorted(
        (
            {
                "deployment_id": r.deployment_id,
                "model_id": r.model_id,
                "model_name": r.model_name,
                "ip": r.ip,
                "port": r.port,
                "infos": r.infos,
            }
            for r in cluster.models_run.values()
        ),
        key=lambda m: m["model_id"],
    )


async def commands(cluster):
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        words = line.split()
        if len(words) == 3 and words[0] == "report":
            runner = cluster.models_run.get(words[1])
            if runner is not None:
                await cluster.process_failure(runner, words[2], "reported by the e2e test")


async def main():
    cluster = ModelCluster(crunch, host, int(port), Runner)
    await cluster.init()
    last = state(cluster)
    print(json.dumps(last), flush=True)
    asyncio.create_task(cluster.sync())
    asyncio.create_task(commands(cluster))
    while True:
        await asyncio.sleep(0.02)
        now = state(cluster)
        if now != last:
            print(json.dumps(now), flush=True)
            last = now


asyncio.run(main())
