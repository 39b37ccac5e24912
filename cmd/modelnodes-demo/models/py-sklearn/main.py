"""A cruncher's scikit-learn submission: its packages come from its
requirements.txt (the node builds that environment), its fitted weights from
resources/model.json, next to this file, read-only.

The weights are a LinearRegression's fitted attributes (fitted offline on
rows of y = 2a - b + 0.5), saved as JSON rather than a pickle: a pickle ties
the file to one scikit-learn release and cannot be read in review; these
load into a real estimator, whose predict checks the DataFrame's columns."""
import json
import os

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression

from crunch_base import Tracker

RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")


class SklearnTracker(Tracker):
    def __init__(self):
        with open(os.path.join(RESOURCES, "model.json")) as f:
            w = json.load(f)
        self.model = LinearRegression()
        self.model.coef_ = np.array(w["coef"], dtype=float)
        self.model.intercept_ = float(w["intercept"])
        self.model.feature_names_in_ = np.array(w["features"], dtype=object)
        self.model.n_features_in_ = len(w["features"])

    def add(self, a, b):
        return a + b

    def predict(self, X):
        features = list(self.model.feature_names_in_)
        return pd.DataFrame({"prediction": self.model.predict(X[features])})
