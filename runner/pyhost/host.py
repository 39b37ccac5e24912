"""Model worker host for Python submissions.

Started by model-runner with the participant's submission directory. Speaks the
runner's frame protocol (docs/worker-protocol.md) on the inherited socket named
by MODELNODES_WORKER_FD and applies CrunchDAO's DynamicSubclass and TrainInfer
semantics. Uses only the standard library; pyarrow (and pandas, when the
model's environment has it) is imported when a PARQUET or ARROW value needs it.

usage: python3 -B host.py --model-dir DIR [--entry MODULE]
"""

import argparse
import importlib
import importlib.util
import inspect
import io
import json
import math
import os
import pkgutil
import socket
import struct
import sys
import traceback

PROTOCOL = 1

HELLO, SETUP, CALL, REST, INFER_SETUP, INFER, INFER_RESET, RESULT = (
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x10)
NONE, DOUBLE, INT, STRING, PARQUET, ARROW, JSON = range(7)

SUCCESS = "SUCCESS"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
BAD_IMPLEMENTATION = "BAD_IMPLEMENTATION"
SETUP_FAILED = "SETUP_FAILED"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
MODEL_FAILED = "MODEL_FAILED"
UNKNOWN = "UNKNOWN"

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


class Failure(Exception):
    """An error with a CrunchDAO status code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def describe(exc):
    return "%s: %s" % (type(exc).__name__, exc)


def log(*parts):
    print("[model-host]", *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- variants

def decode_variant(vtype, raw, where):
    try:
        if vtype == NONE:
            return None
        if vtype == DOUBLE:
            if len(raw) != 8:
                raise ValueError("DOUBLE needs 8 bytes, got %d" % len(raw))
            return struct.unpack("<d", raw)[0]
        if vtype == INT:
            if len(raw) != 8:
                raise ValueError("INT needs 8 bytes, got %d" % len(raw))
            return struct.unpack("<q", raw)[0]
        if vtype == STRING:
            return raw.decode("utf-8")
        if vtype == JSON:
            return json.loads(raw.decode("utf-8"))
        if vtype in (PARQUET, ARROW):
            return decode_table(vtype, raw)
        raise ValueError("unknown variant type %d" % vtype)
    except Failure:
        raise
    except Exception as exc:  # the caller sent something undecodable
        raise Failure(INVALID_ARGUMENT, "%s: %s" % (where, describe(exc)))


TABLE_TYPES = {PARQUET: "PARQUET", ARROW: "ARROW"}


def decode_table(vtype, raw):
    """A PARQUET or ARROW value as a pandas DataFrame, as CrunchDAO's runner
    hands PARQUET to a model (pyarrow.parquet.read_table(...).to_pandas()); an
    environment with pyarrow but no pandas gets the pyarrow.Table itself."""
    pyarrow = need_pyarrow("%s arguments" % TABLE_TYPES[vtype], BAD_IMPLEMENTATION)
    if vtype == PARQUET:
        import pyarrow.parquet
        table = pyarrow.parquet.read_table(pyarrow.BufferReader(raw))
    else:
        import pyarrow.ipc
        table = pyarrow.ipc.open_stream(raw).read_all()
    if importlib.util.find_spec("pandas") is None:
        return table
    try:
        importlib.import_module("pandas")
    except Exception as exc:  # installed but broken: not the caller's fault
        raise Failure(BAD_IMPLEMENTATION, "pandas fails to import: %s" % describe(exc))
    return table.to_pandas()


def need_pyarrow(what, code):
    """Imports pyarrow, or fails with code and a message naming it.

    An argument the environment cannot decode is BAD_IMPLEMENTATION: the
    coordinator sent a valid value, and only the submission's requirements can
    fix it (CrunchDAO's runner answers an ImportError at Setup so; its image
    always has pandas and pyarrow, the runner's own dependencies). A result is
    MODEL_FAILED, like any other result that cannot be encoded."""
    try:
        return importlib.import_module("pyarrow")
    except Exception as exc:  # missing, or installed but broken
        raise Failure(code, "%s need pyarrow, which the model's Python environment lacks (%s): "
                      "add pyarrow (and pandas, for DataFrames) to requirements.txt" % (what, describe(exc)))


def encode_variant(value):
    """Types a result by value, as CrunchDAO's runner does. A result that
    cannot be encoded is the model's failure (MODEL_FAILED), never the
    caller's: CrunchDAO's client raises INVALID_ARGUMENT as its own usage
    error."""
    try:
        return encode_value(value)
    except Failure:
        raise
    except Exception as exc:
        raise Failure(MODEL_FAILED, "the result cannot be encoded: %s" % describe(exc))


def encode_value(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return INT, struct.pack("<q", int(value))
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise Failure(MODEL_FAILED, "returned int %d does not fit in 64 bits" % value)
        return INT, struct.pack("<q", value)
    if isinstance(value, float):
        return DOUBLE, struct.pack("<d", value)
    if isinstance(value, str):
        return STRING, value.encode("utf-8")
    if isinstance(value, (dict, list)):
        try:
            return JSON, json.dumps(value).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise Failure(MODEL_FAILED, "returned value is not JSON-serializable: %s" % exc)
    # A DataFrame or a pyarrow Table goes back as PARQUET, what CrunchDAO's
    # runner sends and the only table type its client decodes. Their modules
    # are loaded if the model made such a value.
    pandas = sys.modules.get("pandas")
    is_frame = pandas is not None and isinstance(value, pandas.DataFrame)
    pyarrow = sys.modules.get("pyarrow")
    if is_frame or (pyarrow is not None and isinstance(value, pyarrow.Table)):
        pyarrow = need_pyarrow("DataFrame results", MODEL_FAILED)
        import pyarrow.parquet
        table = pyarrow.Table.from_pandas(value) if is_frame else value
        sink = pyarrow.BufferOutputStream()
        pyarrow.parquet.write_table(table, sink)
        return PARQUET, sink.getvalue().to_pybytes()
    raise Failure(MODEL_FAILED, "returned a %s, which no Variant type carries" % type(value).__name__)


# ---------------------------------------------------------------- framing

class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            raise Failure(UNKNOWN, "truncated request frame")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def str(self):
        return self.take(self.u32()).decode("utf-8")

    def variant(self):
        vtype = self.u8()
        return vtype, bytes(self.take(self.u32()))


def read_exact(sock_file, n):
    data = sock_file.read(n)
    if data is None or len(data) < n:
        return None
    return data


def send_frame(sock, kind, ident, body):
    sock.sendall(struct.pack(">IBI", len(body) + 5, kind, ident) + body)


def pack_str(text):
    raw = text.encode("utf-8", "replace")
    return struct.pack(">I", len(raw)) + raw


def result_body(code, message="", variant=None):
    body = pack_str(code) + pack_str(message)
    if variant is None:
        return body + b"\x00"
    vtype, raw = variant
    return body + b"\x01" + struct.pack(">BI", vtype, len(raw)) + raw


def read_invocation(r):
    name = r.str()
    args = []
    for _ in range(r.u32()):
        position = r.u32()
        args.append((position, r.variant()))
    kwargs = []
    for _ in range(r.u32()):
        keyword = r.str()
        kwargs.append((keyword, r.variant()))
    return name, args, kwargs


# ---------------------------------------------------------------- submission

class Submission:
    def __init__(self, model_dir, entry):
        self.model_dir = os.path.abspath(model_dir)
        self.entry = entry
        self.modules = []   # the submission's modules, in import order
        self.load_error = None
        self.instance = None
        self.dropped_kwargs = set()
        self.infer_state = {}

    def load(self):
        sys.path.insert(0, self.model_dir)
        try:
            if self.entry:
                importlib.import_module(self.entry)
            else:
                for info in sorted(pkgutil.iter_modules([self.model_dir]), key=lambda i: i.name):
                    importlib.import_module(info.name)
        except BaseException as exc:  # a submission may even call sys.exit
            self.load_error = describe(exc)
            log("the submission failed to load:", self.load_error)
            traceback.print_exc()
        self.modules = [m for m in list(sys.modules.values()) if self.owns(m)]

    def owns(self, module):
        path = getattr(module, "__file__", None)
        return bool(path) and os.path.abspath(path).startswith(self.model_dir + os.sep)

    def services(self):
        found = ["dynamic_subclass"]
        if self.find_function("infer") is not None:
            found += ["train_infer", "train_infer_stream"]
        return found

    def find_function(self, name):
        for module in self.modules:
            fn = getattr(module, name, None)
            if callable(fn) and getattr(fn, "__module__", None) == module.__name__:
                return fn
        return None

    # DynamicSubclass -------------------------------------------------

    # The fixed messages are CrunchDAO's runner's words (runner/frame's Msg*
    # constants), in its order of checks.

    def setup(self, class_name, args, kwargs):
        if self.instance is not None:
            return "Instance already exists"
        class_name = class_name.strip()
        if not class_name:
            raise Failure(INVALID_ARGUMENT, "class_name cannot be empty")
        if "." not in class_name:
            raise Failure(SETUP_FAILED, "Invalid class name '%s'. Use 'module.ClassName' format." % class_name)
        if self.load_error:
            raise Failure(BAD_IMPLEMENTATION, "the submission failed to import: " + self.load_error)
        module_name, base_name = class_name.rsplit(".", 1)
        try:
            base_module = importlib.import_module(module_name)
        except ImportError as exc:
            raise Failure(BAD_IMPLEMENTATION, exc.msg)
        except Exception as exc:
            raise Failure(BAD_IMPLEMENTATION, "cannot import %s: %s" % (module_name, describe(exc)))
        base = getattr(base_module, base_name, None)
        if base is None:
            raise Failure(SETUP_FAILED, "Class '%s' not found in module '%s'." % (base_name, module_name))
        if not isinstance(base, type):
            raise Failure(SETUP_FAILED, "Object '%s' in module '%s' is not a class." % (base_name, module_name))
        cls = self.find_subclass(base)
        if cls is None:
            raise Failure(BAD_IMPLEMENTATION, "No Inherited class found from %s." % base)
        positional = decode_positional(args)
        keyword = {k: decode_variant(t, raw, "argument %r" % k) for k, (t, raw) in kwargs}
        try:
            self.instance = cls(*positional, **keyword)
        except Exception as exc:
            raise Failure(SETUP_FAILED, "%s(...) raised %s" % (cls.__name__, describe(exc)))
        return ""

    def find_subclass(self, base):
        # The first subclass in the submission that is not defined beside the
        # base: a reference implementation shipped with the base is not the
        # participant's model.
        for module in self.modules:
            for value in list(vars(module).values()):
                if (isinstance(value, type) and value is not base and issubclass(value, base)
                        and value.__module__ != base.__module__ and value.__module__ == module.__name__):
                    return value
        return None

    def call(self, method_name, args, kwargs):
        if self.instance is None:
            raise Failure(FAILED_PRECONDITION, "Setup has not been called yet")
        if not method_name:
            raise Failure(INVALID_ARGUMENT, "methodName cannot be empty")
        method = getattr(self.instance, method_name, None)
        if method is None or not callable(method):
            raise Failure(BAD_IMPLEMENTATION, 'Method "%s" not found in class "%s"' % (method_name, type(self.instance).__name__))
        positional = decode_positional(args)
        keyword = self.accepted_kwargs(method, method_name, len(positional), kwargs)
        check_binding(method, positional, keyword)
        try:
            return method(*positional, **keyword)
        except Exception as exc:
            raise Failure(MODEL_FAILED, "The model raised an exception: %s" % exc)

    def accepted_kwargs(self, method, method_name, npositional, kwargs):
        if not kwargs:
            return {}
        signature = signature_of(method)
        params = None if signature is None else list(signature.parameters.values())
        keyword = {}
        for name, (vtype, raw) in kwargs:
            accepted = params is None or any(p.kind == p.VAR_KEYWORD for p in params) or any(
                p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and (p.kind == p.KEYWORD_ONLY or i >= npositional)
                for i, p in enumerate(params))
            if accepted:
                keyword[name] = decode_variant(vtype, raw, "argument %r" % name)
            elif (method_name, name) not in self.dropped_kwargs:
                self.dropped_kwargs.add((method_name, name))
                log("dropping keyword argument %r: %s does not accept it" % (name, method_name))
        return keyword

    def rest(self):
        if self.instance is None:
            return "No instance exists to reset"
        self.instance = None
        return "Instance successfully reset"

    # TrainInfer --------------------------------------------------------

    def infer_setup(self, stream):
        if self.load_error:
            raise Failure(BAD_IMPLEMENTATION, "the submission failed to import: " + self.load_error)
        infer = self.find_function("infer")
        if infer is None:
            raise Failure(BAD_IMPLEMENTATION, "the submission defines no infer function")
        if not stream:
            self.infer_state[False] = infer
            return
        feed = Feed()
        try:
            generator = infer(feed)
            if not inspect.isgenerator(generator):
                raise Failure(BAD_IMPLEMENTATION, "a streaming infer must be a generator function")
            next(generator)  # the model yields once when it is ready
        except Failure:
            raise
        except StopIteration:
            raise Failure(BAD_IMPLEMENTATION, "infer stopped before yielding its ready signal")
        except Exception as exc:
            raise Failure(SETUP_FAILED, "infer raised during setup: %s" % describe(exc))
        self.infer_state[True] = (generator, feed)

    def infer(self, stream, value):
        state = self.infer_state.get(stream)
        if state is None:
            raise Failure(FAILED_PRECONDITION, "Call Setup first")
        try:
            if not stream:
                return state(value)
            generator, feed = state
            feed.put(value)
            return next(generator)
        except StopIteration:
            del self.infer_state[stream]
            raise Failure(MODEL_FAILED, "infer stopped yielding predictions")
        except Exception as exc:
            raise Failure(MODEL_FAILED, describe(exc))

    def infer_reset(self, stream):
        self.infer_state.pop(stream, None)
        self.infer_setup(stream)


class Feed:
    """The iterator a streaming infer reads: one value per Infer request."""

    _EMPTY = object()

    def __init__(self):
        self.value = self._EMPTY

    def put(self, value):
        self.value = value

    def __iter__(self):
        return self

    def __next__(self):
        if self.value is self._EMPTY:
            raise StopIteration  # read twice without yielding a prediction
        value, self.value = self.value, self._EMPTY
        return value


def decode_positional(args):
    ordered = sorted(args, key=lambda a: a[0])
    for before, after in zip(ordered, ordered[1:]):
        if before[0] == after[0]:
            raise Failure(INVALID_ARGUMENT, "two arguments at position %d" % after[0])
    return [decode_variant(t, raw, "argument %d" % pos) for pos, (t, raw) in ordered]


# Signatures by function: inspect.signature costs about 8 µs a call, as much
# as a small model's whole answer. A bound method's signature depends only on
# its function (the instance is not part of it), so it is keyed by that; the
# cache is bounded, since a model may hand out a new callable on every call.
_signatures = {}
_SIGNATURES_MAX = 256


def signature_of(method):
    """inspect.signature(method), cached; None when it has none."""
    key = getattr(method, "__func__", method)
    try:
        return _signatures[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable: not cached
        key = None
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):
        signature = None
    if key is not None:
        if len(_signatures) >= _SIGNATURES_MAX:
            _signatures.clear()
        _signatures[key] = signature
    return signature


def check_binding(method, positional, keyword):
    signature = signature_of(method)
    if signature is None:
        return
    try:
        signature.bind(*positional, **keyword)
    except TypeError as exc:
        raise Failure(INVALID_ARGUMENT, "%s: %s" % (getattr(method, "__name__", "method"), exc))


# ---------------------------------------------------------------- main loop

def handle(sub, kind, r):
    if kind == SETUP:
        name, args, kwargs = read_invocation(r)
        return SUCCESS, sub.setup(name, args, kwargs), None
    if kind == CALL:
        name, args, kwargs = read_invocation(r)
        return SUCCESS, "", encode_variant(sub.call(name, args, kwargs))
    if kind == REST:
        return SUCCESS, sub.rest(), None
    if kind == INFER_SETUP:
        sub.infer_setup(bool(r.u8()))
        return SUCCESS, "", None
    if kind == INFER:
        stream = bool(r.u8())
        vtype, raw = r.variant()
        value = decode_variant(vtype, raw, "argument")
        return SUCCESS, "", encode_variant(sub.infer(stream, value))
    if kind == INFER_RESET:
        sub.infer_reset(bool(r.u8()))
        return SUCCESS, "", None
    raise Failure(UNKNOWN, "unsupported request kind %d" % kind)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--entry", default="",
                        help="module to import first (default: main if main.py exists, else every top-level module)")
    opts = parser.parse_args()
    entry = opts.entry
    if not entry and os.path.exists(os.path.join(opts.model_dir, "main.py")):
        entry = "main"

    fd = int(os.environ.get("MODELNODES_WORKER_FD", "3"))
    sock = socket.socket(fileno=fd)
    incoming = sock.makefile("rb", buffering=1 << 16)
    # The participant's prints must not corrupt anything: the protocol has
    # its own socket, and stdout goes to the runner's log.
    sub = Submission(opts.model_dir, entry)
    sub.load()
    hello = {
        "protocol": PROTOCOL,
        "concurrency": 1,
        "runtime": "python %d.%d.%d" % sys.version_info[:3],
        "services": sub.services(),
    }
    if sub.load_error:
        hello["load_error"] = sub.load_error
    send_frame(sock, HELLO, 0, json.dumps(hello).encode())

    while True:
        header = read_exact(incoming, 9)
        if header is None:
            return 0  # the runner closed the socket
        length, kind, ident = struct.unpack(">IBI", header)
        body = read_exact(incoming, length - 5)
        if body is None:
            return 0
        try:
            code, message, variant = handle(sub, kind, Reader(body))
        except Failure as failure:
            code, message, variant = failure.code, failure.message, None
        except Exception as exc:
            traceback.print_exc()
            code, message, variant = UNKNOWN, describe(exc), None
        send_frame(sock, RESULT, ident, result_body(code, message, variant))


def run():
    try:
        return main()
    finally:
        # Flush what the model printed before main's socket is released: the
        # runner takes the socket's end for the worker's, and stops it.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


if __name__ == "__main__":
    sys.exit(run())
