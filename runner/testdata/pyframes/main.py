"""A submission that works on tables: pandas DataFrames where the environment
has pandas, pyarrow Tables where it has only pyarrow. Nothing is imported at
the top, so the module loads in every environment the tests build."""

from frames_base import FrameModel


class Frames(FrameModel):
    def kind(self, value):
        return "%s.%s" % (type(value).__module__, type(value).__name__)

    def enrich(self, df):
        """A new column from two others, a changed one, the index kept."""
        df = df.copy()
        df["total"] = (df["a"] + df["b"]) * self.scale
        df["name"] = df["name"].str.upper()
        return df

    def enrich_table(self, table):
        import pyarrow.compute as pc
        total = pc.multiply(pc.add(table["a"], pc.cast(table["b"], "float64")), self.scale)
        return table.append_column("total", total)

    def as_table(self, df):
        import pyarrow
        return pyarrow.Table.from_pandas(df, preserve_index=False)

    def column_sums(self, df):
        return {name: float(df[name].sum()) for name in df.columns if df[name].dtype.kind in "if"}

    def make_frame(self):
        import pandas
        return pandas.DataFrame({"x": [1, 2]})

    def mixed_frame(self):
        # pyarrow cannot type a column of ints and strings.
        import pandas
        return pandas.DataFrame({"x": [1, "one"]})


def infer(df):
    return (df[["a"]] * 2).rename(columns={"a": "double_a"})
