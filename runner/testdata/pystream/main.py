def infer(stream):
    total = 0.0
    yield  # ready
    for x in stream:
        total += x
        yield total
