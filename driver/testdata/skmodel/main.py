"""A scikit-learn model fitted on its resources: y = 2a - b + 0.5."""
import os

import pandas as pd
import sklearn
from sklearn.linear_model import LinearRegression

from model_base import Model

RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")


class Linear(Model):
    def __init__(self):
        train = pd.read_csv(os.path.join(RESOURCES, "train.csv"))
        self.fit = LinearRegression().fit(train[["a", "b"]], train["y"])

    def predict(self, X):
        return pd.DataFrame({"prediction": self.fit.predict(X[["a", "b"]])})

    def versions(self):
        return "pandas %s, scikit-learn %s" % (pd.__version__, sklearn.__version__)
