"""The expert-cache policies (DESIGN §4.2): one table that the analysis, the CLI and the dashboard read.

Each policy is a `CachePolicy`: its name (or a name pattern such as ``lookahead-<L>``), the kind of
kernel behind it, the service models it is defined for, whether it admits every miss, may decline
(bypass) or never admits, a one-line description, and `simulate`, the function that turns one
chunk's request arrays into hit counts. `routescope.analysis.cache` (`parse_policy`, the default
set, the error text), `routescope analyze cache --policies` (help and default) and the dashboard's
Locality page (its policy list and which policies a service allows) all read this table, so a new
policy is one registration here plus its test.

Register a policy with the decorator (or `register(CachePolicy(...))` for a table entry)::

    import numpy as np

    from routescope.analysis import _kernels as K
    from routescope.analysis.policies import Requests, register_policy


    @register_policy(
        "lru-stack",                        # or a pattern: "my-policy-<N>" (N an integer >= 1)
        kernel="stack",                     # stack | per-capacity | counts (see KERNELS)
        description="LRU again, through the generic stack kernel",
        services=("stream", "token", "simultaneous"),
        admission="demand",                 # demand | bypass | none (see ADMISSIONS)
        default=False,                      # part of the default set of `analyze cache`?
    )
    def lru_stack(req: Requests, slots: np.ndarray, param: int) -> np.ndarray:
        '''Cold-start hits int64[req.num_layers, len(slots)] with `slots` cache slots.'''
        hist, _, _ = K.stack_depths(
            req.X, req.offsets, req.chunks, req.n_items, K.LRU, req.service_code, 1
        )
        return np.cumsum(hist[:, 1:], axis=1)[:, slots - 1]

`simulate(req, slots, param)` gets one chunk of whole sequences (`Requests`: request arrays
``X int16/int32[rows, layers, K]`` padded with -1, sequence `offsets`, the number of distinct items and
the service) and returns cold-start hits per layer at each size in `slots`, summed over the
chunk's sequences; each sequence's cache starts empty, so counts add over chunks and the result is
exact however the run is cut. `param` is the pattern's integer (0 for plain names). Warm start is
added by the caller for `demand` and `bypass` policies (they never evict while a slot is free, so
warm = cold + min(C, distinct items) per sequence). A new priority rule for the shared stack
kernel (like LRU or Belady) is a branch of `_kernels._key` and a code beside `LRU … BYPASS`.
Lookups of unknown names fail with one line that lists every valid name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property, partial

import numpy as np

from routescope.analysis import _kernels as K
from routescope.core.errors import InvalidParameterError
from routescope.core.registry import Named, Registry

#: Service models (DESIGN §4.2) and their kernel codes.
SERVICES: dict[str, int] = {"stream": K.STREAM, "token": K.TOKEN, "simultaneous": K.SIMULTANEOUS}
#: Kernel kinds: `stack` = one pass gives every capacity (inclusion property: hits never fall as C
#: grows); `per-capacity` = simulated once per capacity; `counts` = read off request counts.
KERNELS = ("stack", "per-capacity", "counts")
#: Admission: `demand` = every miss is admitted; `bypass` = a miss may be served without admission;
#: `none` = the cache is preloaded and never changes.
ADMISSIONS = ("demand", "bypass", "none")


@dataclass(frozen=True)
class Requests:
    """One chunk's requests, as the kernels take them.

    X: int16/int32[rows, layers, K] (request sets in order, -1 = padding); offsets: int64[S+1] (the
    rows of each sequence; a sequence's cache starts empty); n_items: distinct item ids (E per
    layer, or E·#layers for the pooled global cache); service: a key of `SERVICES`.
    """

    X: np.ndarray
    offsets: np.ndarray
    n_items: int
    service: str = "stream"

    @property
    def num_layers(self) -> int:
        return int(self.X.shape[1])

    @property
    def service_code(self) -> int:
        return SERVICES[self.service]

    @cached_property
    def chunks(self) -> np.ndarray:
        """Sequence ranges the parallel kernels split the work into (results do not depend on it)."""
        num_seqs = len(self.offsets) - 1
        n = max(1, min(num_seqs, 8 if self.num_layers >= 4 else 64))
        return K.chunk_bounds(num_seqs, n)


#: simulate(requests, slots, param) -> cold-start hits int64[layers, len(slots)].
Simulator = Callable[[Requests, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class CachePolicy(Named):
    """One registered policy (see the module docstring for the fields' meaning; the name and its
    pattern parameter are `routescope.core.registry.Named`'s)."""

    name: str
    kernel: str
    simulate: Simulator = field(repr=False)
    description: str
    services: tuple[str, ...] = tuple(SERVICES)
    admission: str = "demand"
    default: bool = True
    example: int = 16  # a pattern's parameter in the default set and in examples
    param_min: int = 1

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"policy {self.name}: kernel must be one of {KERNELS}")
        if self.admission not in ADMISSIONS:
            raise ValueError(f"policy {self.name}: admission must be one of {ADMISSIONS}")
        bad = [s for s in self.services if s not in SERVICES]
        if bad or not self.services:
            raise ValueError(f"policy {self.name}: services must be among {tuple(SERVICES)}")
        self.check_name("policy")

    @property
    def warm_fill(self) -> bool:
        """Warm start adds min(C, distinct items) per sequence (policies that admit)."""
        return self.admission != "none"

    def allows(self, service: str) -> bool:
        return service in self.services

    def check_service(self, service: str, name: str | None = None) -> None:
        """One clear error if the policy is not defined under `service`."""
        if not self.allows(service):
            raise InvalidParameterError(
                f"{name or self.name} is defined for {' and '.join(self.services)} service only; "
                f"drop it for {service}"
            )


_REGISTRY: Registry[CachePolicy] = Registry("cache policy")


def register(policy: CachePolicy) -> CachePolicy:
    """Add a policy to the table (a name may be registered once)."""
    return _REGISTRY.register(policy)


def register_policy(
    name: str,
    *,
    kernel: str,
    description: str,
    services: Iterable[str] = tuple(SERVICES),
    admission: str = "demand",
    default: bool = True,
    example: int = 16,
    param_min: int = 1,
) -> Callable[[Simulator], Simulator]:
    """Decorator: register the decorated simulate function as policy `name`."""
    return _REGISTRY.decorator(
        lambda fn: CachePolicy(
            name=name,
            kernel=kernel,
            simulate=fn,
            description=description,
            services=tuple(services),
            admission=admission,
            default=default,
            example=example,
            param_min=param_min,
        )
    )


def registered() -> list[CachePolicy]:
    """Every policy, in registration order."""
    return _REGISTRY.entries()


def valid_names() -> str:
    """'lru, lfu, …, lookahead-<L> (L >= 1), …': the names, as errors and help list them."""
    return _REGISTRY.valid_names()


def get_policy(name: str) -> tuple[CachePolicy, int]:
    """(policy, parameter) for a policy name such as 'lru' or 'lookahead-16'; one clear error
    listing the valid names otherwise."""
    return _REGISTRY.lookup(name)


def default_policies() -> tuple[str, ...]:
    """The policies `cache_hit_rates` and `routescope analyze cache` run by default."""
    return tuple(p.default_name for p in _REGISTRY.values() if p.default)


def policies_for_service(service: str) -> list[CachePolicy]:
    """The policies defined under `service` (e.g. belady-bypass is not under simultaneous)."""
    if service not in SERVICES:
        raise InvalidParameterError(
            f"unknown service {service!r}; use one of {', '.join(SERVICES)}"
        )
    return [p for p in _REGISTRY.values() if p.allows(service)]


# ---- the built-in policies ------------------------------------------------------------------------
def stack_hits(code: int, req: Requests, slots: np.ndarray, param: int) -> np.ndarray:
    """Hits at every size in `slots` from one pass of the stack kernel with policy `code`."""
    hist, _, _ = K.stack_depths(
        req.X, req.offsets, req.chunks, req.n_items, code, req.service_code, max(param, 1)
    )
    return np.cumsum(hist[:, 1:], axis=1)[:, np.asarray(slots) - 1]


def _fifo(req: Requests, slots: np.ndarray, param: int) -> np.ndarray:
    return K.fifo_hits(req.X, req.offsets, req.chunks, req.n_items, slots, req.service_code)


def _static(req: Requests, slots: np.ndarray, param: int) -> np.ndarray:
    return K.static_topc(req.X, req.offsets, req.chunks, req.n_items)[:, np.asarray(slots)]


for _entry in (
    CachePolicy("lru", "stack", partial(stack_hits, K.LRU), "evict the least recently used expert"),
    CachePolicy(
        "lfu",
        "stack",
        partial(stack_hits, K.LFU),
        "evict the expert requested least often so far in the sequence (ties: LRU)",
    ),
    CachePolicy(
        "fifo", "per-capacity", _fifo, "evict the expert admitted earliest (Belady's anomaly)"
    ),
    CachePolicy(
        "static",
        "counts",
        _static,
        "the sequence's C most-used experts, preloaded; misses are not admitted",
        admission="none",
    ),
    CachePolicy(
        "lookahead-<L>",
        "stack",
        partial(stack_hits, K.LOOKAHEAD),
        "evict the expert with the fewest requests in the next L tokens (ties: LRU)",
    ),
    CachePolicy(
        "belady",
        "stack",
        partial(stack_hits, K.BELADY),
        "Belady/MIN: evict the expert requested again farthest ahead (optimal if every miss "
        "is admitted)",
    ),
    CachePolicy(
        "belady-bypass",
        "stack",
        partial(stack_hits, K.BYPASS),
        "MIN that may decline to admit a miss (bound for systems that run a missing expert "
        "elsewhere)",
        services=("stream", "token"),
        admission="bypass",
    ),
):
    register(_entry)
