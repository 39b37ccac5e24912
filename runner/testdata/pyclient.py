"""A coordinator-side client written with Python's grpcio, as CrunchDAO's
model-runner-client is: it proves the runner's wire format from another
language's gRPC and protobuf stack.

usage: pyclient.py ADDRESS GENERATED_DIR
GENERATED_DIR holds the *_pb2.py modules protoc generated from proto/.
"""

import math
import json
import struct
import sys

sys.path.insert(0, sys.argv[2])

import grpc  # noqa: E402
from google.protobuf import empty_pb2  # noqa: E402
from commons import commons_pb2 as commons  # noqa: E402
from dynamic_subclass import dynamic_subclass_pb2 as ds  # noqa: E402
from train_infer import train_infer_pb2 as ti  # noqa: E402

failures = []


def check(what, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + what + ("" if cond else ": " + str(detail)))
    if not cond:
        failures.append(what)


def unary(channel, service, method, request_type, response_type):
    return channel.unary_unary(
        "/%s/%s" % (service, method),
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )


def variant(vtype, raw):
    return commons.Variant(type=vtype, value=raw)


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    grpc.channel_ready_future(channel).result(timeout=20)
    DS = "dynamic_subclass.DynamicSubclassService"
    setup = unary(channel, DS, "Setup", ds.SetupRequest, ds.SetupResponse)
    call = unary(channel, DS, "Call", ds.CallRequest, ds.CallResponse)
    rest = unary(channel, DS, "Rest", empty_pb2.Empty, ds.RestResponse)

    r = setup(ds.SetupRequest(
        className="crunch_base.Tracker",
        instanceArguments=[commons.Argument(position=0, data=variant(commons.DOUBLE, struct.pack("d", 2.0)))],
        instanceKwArguments=[commons.KwArgument(keyword="offset", data=variant(commons.INT, struct.pack("<q", 1)))],
    ), timeout=20)
    check("Setup SUCCESS", r.status.code == "SUCCESS", r.status)

    r = call(ds.CallRequest(methodName="predict",
                            methodArguments=[commons.Argument(position=0, data=variant(commons.INT, struct.pack("<q", 5)))],
                            methodKwArguments=[commons.KwArgument(keyword="ignored", data=variant(commons.STRING, b"x"))]),
             timeout=20)
    check("predict(5) = 11.0 as DOUBLE", r.status.code == "SUCCESS" and r.methodResponse.type == commons.DOUBLE
          and struct.unpack("d", r.methodResponse.value)[0] == 11.0, r)

    doc = json.dumps({"v": [float("nan"), float("inf"), "é"]}).encode()
    r = call(ds.CallRequest(methodName="echo", methodArguments=[commons.Argument(position=0, data=variant(commons.JSON, doc))]),
             timeout=20)
    back = json.loads(r.methodResponse.value) if r.methodResponse.type == commons.JSON else None
    check("echo JSON with NaN and Infinity", back is not None and math.isnan(back["v"][0]) and back["v"][1] == math.inf
          and back["v"][2] == "é", r)

    r = call(ds.CallRequest(methodName="echo", methodArguments=[commons.Argument(position=0, data=variant(commons.STRING, "ü".encode()))]),
             timeout=20)
    check("echo STRING", r.methodResponse.type == commons.STRING and r.methodResponse.value.decode() == "ü", r)

    r = call(ds.CallRequest(methodName="nothing"), timeout=20)
    check("None result leaves methodResponse unset", r.status.code == "SUCCESS" and not r.HasField("methodResponse"), r)

    r = call(ds.CallRequest(methodName="fail"), timeout=20)
    check("raising method is MODEL_FAILED", r.status.code == "MODEL_FAILED" and "unhappy" in r.status.message, r)

    r = call(ds.CallRequest(methodName="echo", methodArguments=[commons.Argument(position=0, data=variant(commons.DOUBLE, b"1234567"))]),
             timeout=20)
    check("7-byte DOUBLE is INVALID_ARGUMENT", r.status.code == "INVALID_ARGUMENT", r)

    r = rest(empty_pb2.Empty(), timeout=20)
    check("Rest SUCCESS", r.status.code == "SUCCESS", r)
    r = call(ds.CallRequest(methodName="echo"), timeout=20)
    check("Call after Rest is FAILED_PRECONDITION", r.status.code == "FAILED_PRECONDITION", r)

    TI = "train_infer.TrainInferService"
    unary(channel, TI, "Setup", empty_pb2.Empty, empty_pb2.Empty)(empty_pb2.Empty(), timeout=20)
    r = unary(channel, TI, "Infer", ti.InferRequest, ti.InferResponse)(
        ti.InferRequest(argument=variant(commons.INT, struct.pack("<q", 7))), timeout=20)
    check("TrainInfer.Infer", r.prediction.type == commons.JSON and json.loads(r.prediction.value) == {"got": 7}, r)

    health = unary(channel, "grpc.health.v1.Health", "Check", HealthRequest, HealthResponse)
    check("health SERVING", health(HealthRequest(service=""), timeout=20).status == 1)

    print("%d failed" % len(failures))
    return 1 if failures else 0


# grpc.health.v1 messages, declared here so the client needs no grpcio-health-checking.
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

_file = descriptor_pb2.FileDescriptorProto(name="pyclient_health.proto", package="grpc.health.v1", syntax="proto3")
_req = _file.message_type.add(name="HealthCheckRequest")
_req.field.add(name="service", number=1, type=9, label=1)
_res = _file.message_type.add(name="HealthCheckResponse")
_res.field.add(name="status", number=1, type=14, label=1, type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
_enum = _res.enum_type.add(name="ServingStatus")
for _i, _n in enumerate(["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]):
    _enum.value.add(name=_n, number=_i)
_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file)


def _message_class(name):
    desc = _pool.FindMessageTypeByName(name)
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(_pool).GetPrototype(desc)


HealthRequest = _message_class("grpc.health.v1.HealthCheckRequest")
HealthResponse = _message_class("grpc.health.v1.HealthCheckResponse")

if __name__ == "__main__":
    sys.exit(main())
