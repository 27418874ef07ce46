"""Batches from a loader, for tests: plain functions without heavy imports (the GPU tests use them too)."""


def take(loader, n: int) -> list[dict]:
    """The next `n` batches, starting new epochs as needed."""
    out, it = [], iter(loader)
    while len(out) < n:
        try:
            out.append(next(it))
        except StopIteration:
            it = iter(loader)
    return out


def with_a_resume(make_loader, total: int, first: int) -> tuple[list[dict], list[dict]]:
    """`total` batches of one loader, and the same count from a loader stopped after `first` batches whose
    state_dict() a new loader resumed from: an exact resume makes the two lists equal."""
    uninterrupted = take(make_loader(), total)
    stopped = make_loader()
    head = take(stopped, first)
    resumed = make_loader()
    resumed.load_state_dict(stopped.state_dict())
    return uninterrupted, head + take(resumed, total - first)
