"""A model that exercises numpy, pandas, pyarrow, scikit-learn and lightgbm
(OpenMP threads), and the ways Python starts threads and processes, inside
the sandbox and under its seccomp filter. stack() returns what each did, so
the test can check each worked."""
import io
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

from model_base import Model


def _threads():
    return len(os.listdir("/proc/self/task"))


# lightgbm's OpenMP pool, counted in a fresh interpreter: in this one,
# numpy, scikit-learn and joblib may have started threads of their own.
_OPENMP = """
import os, numpy as np, lightgbm as lgb
n = lambda: len(os.listdir("/proc/self/task"))
X = np.random.default_rng(0).normal(size=(500, 4)); y = X @ [1.0, 2.0, 0.0, -1.0]
before = n()
lgb.train({"objective": "regression", "num_threads": 2, "verbose": -1}, lgb.Dataset(X, y), num_boost_round=5)
print(before, n())
"""


def _child(conn):
    conn.send(os.getpid())
    conn.close()


class Stack(Model):
    def stack(self):
        out = {"python": platform.python_version()}
        rng = np.random.default_rng(0)
        X = rng.normal(size=(2000, 8))
        w = rng.normal(size=8)
        y = X @ w + rng.normal(size=2000) * 0.1

        # numpy: BLAS and LAPACK (OpenBLAS threads).
        a = X.T @ X
        out["numpy_inverse_error"] = float(np.abs(np.linalg.inv(a) @ a - np.eye(8)).max())
        out["numpy_svd_rank"] = int(np.linalg.matrix_rank(X[:200]))

        # pandas and pyarrow: group, Parquet in memory and on the private /tmp.
        df = pd.DataFrame(X, columns=["c%d" % i for i in range(8)])
        df["y"] = y
        out["pandas_groups"] = int(df.groupby(pd.cut(df.c0, 5), observed=True).y.mean().size)
        buf = io.BytesIO()
        df.to_parquet(buf)
        out["parquet_rows_memory"] = len(pd.read_parquet(io.BytesIO(buf.getvalue())))
        path = os.path.join(tempfile.gettempdir(), "stack.parquet")
        pq.write_table(pa.Table.from_pandas(df), path)
        out["parquet_rows_file"] = pq.read_table(path).num_rows

        # scikit-learn: a linear fit, and a forest fitted by joblib's threads.
        out["sklearn_linear_r2"] = float(LinearRegression().fit(X, y).score(X, y))
        out["sklearn_forest_r2"] = float(RandomForestRegressor(n_estimators=10, n_jobs=2, random_state=0).fit(X, y).score(X, y))

        # lightgbm: training on OpenMP threads.
        booster = lgb.train({"objective": "regression", "num_threads": 2, "verbose": -1},
                            lgb.Dataset(X, y), num_boost_round=50)
        pred = booster.predict(X, num_threads=2)
        out["lightgbm_r2"] = float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
        counts = subprocess.run([sys.executable, "-c", _OPENMP], capture_output=True, text=True, check=True).stdout.split()
        out["threads_before_lightgbm"], out["threads_after_lightgbm"] = int(counts[0]), int(counts[1])

        # Threads, a forked process with a socketpair, a spawned program.
        done = []
        t = threading.Thread(target=lambda: done.append(1))
        t.start()
        t.join()
        out["thread"] = len(done)
        parent, child = multiprocessing.Pipe()  # a socketpair(AF_UNIX)
        p = multiprocessing.get_context("fork").Process(target=_child, args=(child,))
        p.start()
        pid = parent.recv()
        p.join()
        out["fork"] = "pid %s exit %s" % (pid > 0, p.exitcode)
        # A process pool: its locks are POSIX semaphores in /dev/shm.
        with multiprocessing.get_context("fork").Pool(2) as pool:
            out["pool"] = sum(pool.map(abs, [-1, -2, -3]))
        out["subprocess"] = subprocess.run([sys.executable, "-c", "print(6*7)"], capture_output=True, text=True).stdout.strip()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.close()
        out["loopback_socket"] = "bound"
        return out
