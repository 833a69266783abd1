"""What the gateway knows about the fleet: each InferenceDeployment's served name, routing strategy and ready endpoints.

Discovery (Kubernetes watches, or a static list) writes here from its own threads; request handlers read here and
subscribe to changes, so a held request wakes the moment an endpoint turns ready. One lock guards everything: the
catalog is small and reads are short.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from infleet.gateway.cache import CacheSettings
from infleet.gateway.cascade import Rule
from infleet.gateway.slo import NO_SLO, Thresholds

LEAST_OUTSTANDING = "leastOutstanding"
PREFIX_AFFINITY = "prefixAffinity"
STRATEGIES = (LEAST_OUTSTANDING, PREFIX_AFFINITY)

Key = tuple[str, str]  # (namespace, InferenceDeployment name)


@dataclass(frozen=True, order=True)
class Endpoint:
    """One ready replica's HTTP address."""

    host: str
    port: int
    # hashed once: the router looks endpoints up in its counts and sets several times per request
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.host, self.port)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[Endpoint], tuple[str, int]]:
        return Endpoint, (self.host, self.port)  # str hashes differ between processes: never carry _hash over

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter of spec.adapters, served as a model of its own. `uri` (with `revision`) when a replica can be
    asked to load it (the infleet runtime fetches by URI); None for an engine that starts with its adapters."""

    name: str
    uri: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class Deployment:
    namespace: str
    name: str
    served_name: str
    strategy: str = LEAST_OUTSTANDING
    endpoints: tuple[Endpoint, ...] = ()
    slo: Thresholds = NO_SLO
    cache: CacheSettings | None = None  # spec.gateway.responseCache, when enabled
    price: float | None = None  # $ per 1M tokens: the operator's status.costPerMillionTokens
    adapters: tuple[Adapter, ...] = ()  # spec.adapters: LoRA adapters the replicas serve as models of their own
    cascade: Rule | None = None  # spec.gateway.cascade: a model name answered from this deployment first

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def names(self) -> tuple[str, ...]:
        """The model names clients reach this deployment by: the served name, its adapters, its cascade's name."""
        return (self.served_name, *(a.name for a in self.adapters), *((self.cascade.name,) if self.cascade else ()))

    def bare(self, model: str) -> str:
        """The name without this deployment's `namespace/` prefix."""
        return model.partition("/")[2] if model.startswith(f"{self.namespace}/") else model

    def is_cascade(self, model: str) -> bool:
        return self.cascade is not None and self.bare(model) == self.cascade.name

    def adapter(self, model: str) -> Adapter | None:
        """The adapter a client named (bare or `namespace/name`), if it is one."""
        bare = self.bare(model)
        return next((a for a in self.adapters if a.name == bare), None)

    def runtime_name(self, model: str) -> str:
        """What the replica calls the model a client named (bare or `namespace/name`): an adapter or the base."""
        adapter = self.adapter(model)
        return adapter.name if adapter else self.served_name

    @property
    def qualified(self) -> str:
        return f"{self.namespace}/{self.served_name}"


class LookupFailed(Exception):
    """The model name selects no deployment (404) or several (400); `choices` are the names the caller may use."""

    def __init__(self, status: int, message: str, choices: list[str]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.choices = choices


@dataclass
class _Spec:
    served_name: str
    strategy: str
    slo: Thresholds = NO_SLO
    cache: CacheSettings | None = None
    price: float | None = None
    adapters: tuple[Adapter, ...] = ()
    cascade: Rule | None = None


@dataclass(frozen=True)
class _View:
    """Every deployment as built from the specs and slices at one moment, indexed the ways requests read them."""

    deployments: tuple[Deployment, ...]  # sorted by namespace and name
    by_key: dict[Key, Deployment]
    by_name: dict[str, tuple[Deployment, ...]]  # each model name clients may send -> its deployments, sorted


@dataclass
class Catalog:
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _specs: dict[Key, _Spec] = field(default_factory=dict)
    # (namespace, deployment) -> EndpointSlice name -> its ready endpoints
    _slices: dict[Key, dict[str, tuple[Endpoint, ...]]] = field(default_factory=dict)
    _listeners: list[Callable[[Key], None]] = field(default_factory=list)
    # what readers see, built once per change rather than per request: None until the next read after a write
    _view: _View | None = None

    # ---- writers (discovery) --------------------------------------------------------------------------------------

    def set_deployment(
        self,
        namespace: str,
        name: str,
        served_name: str,
        strategy: str = LEAST_OUTSTANDING,
        slo: Thresholds = NO_SLO,
        cache: CacheSettings | None = None,
        price: float | None = None,
        adapters: tuple[Adapter, ...] = (),
        cascade: Rule | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            strategy = LEAST_OUTSTANDING
        with self._lock:
            self._view = None
            self._specs[(namespace, name)] = _Spec(served_name, strategy, slo, cache, price, adapters, cascade)
        self._notify([(namespace, name)])

    def remove_deployment(self, namespace: str, name: str) -> None:
        with self._lock:
            self._view = None
            self._specs.pop((namespace, name), None)
        self._notify([(namespace, name)])

    def replace_deployments(self, namespace: str | None, items: Iterable[Deployment]) -> None:
        """After a (re)list: the deployments in `namespace` (None: everywhere) are exactly `items`."""
        with self._lock:
            self._view = None
            stale = [k for k in self._specs if namespace is None or k[0] == namespace]
            for k in stale:
                del self._specs[k]
            for d in items:
                self._specs[d.key] = _Spec(d.served_name, d.strategy, d.slo, d.cache, d.price, d.adapters, d.cascade)
            changed = set(stale) | set(self._specs)
        self._notify(changed)

    def set_slice(self, namespace: str, deployment: str, slice_name: str, endpoints: Iterable[Endpoint]) -> None:
        with self._lock:
            self._view = None
            self._slices.setdefault((namespace, deployment), {})[slice_name] = tuple(endpoints)
        self._notify([(namespace, deployment)])

    def remove_slice(self, namespace: str, deployment: str, slice_name: str) -> None:
        with self._lock:
            self._view = None
            self._slices.get((namespace, deployment), {}).pop(slice_name, None)
        self._notify([(namespace, deployment)])

    def replace_slices(
        self, namespace: str | None, items: Iterable[tuple[str, str, str, tuple[Endpoint, ...]]]
    ) -> None:
        """After a (re)list: (namespace, deployment, slice name, endpoints) for every slice in scope."""
        with self._lock:
            self._view = None
            stale = [k for k in self._slices if namespace is None or k[0] == namespace]
            for k in stale:
                del self._slices[k]
            for ns, dep, slice_name, endpoints in items:
                self._slices.setdefault((ns, dep), {})[slice_name] = endpoints
            changed = set(stale) | set(self._slices)
        self._notify(changed)

    def subscribe(self, listener: Callable[[Key], None]) -> None:
        """`listener(key)` runs after every change to that deployment, on the writer's thread."""
        with self._lock:
            self._listeners.append(listener)

    def _notify(self, keys: Iterable[Key]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for key in keys:
            for listener in listeners:
                listener(key)

    # ---- readers (request handlers) -------------------------------------------------------------------------------

    def _build(self, key: Key, spec: _Spec) -> Deployment:
        endpoints = sorted({e for eps in self._slices.get(key, {}).values() for e in eps})
        return Deployment(
            key[0],
            key[1],
            spec.served_name,
            spec.strategy,
            tuple(endpoints),
            spec.slo,
            spec.cache,
            spec.price,
            spec.adapters,
            spec.cascade,
        )

    def _current(self) -> _View:
        """The view of the catalog as it is now (the caller holds the lock)."""
        if self._view is None:
            built = tuple(self._build(k, s) for k, s in sorted(self._specs.items()))
            by_name: dict[str, list[Deployment]] = {}
            for d in built:
                for n in dict.fromkeys(d.names):
                    by_name.setdefault(n, []).append(d)
            names = {n: tuple(ds) for n, ds in by_name.items()}
            self._view = _View(built, {d.key: d for d in built}, names)
        return self._view

    def get(self, key: Key) -> Deployment | None:
        with self._lock:
            return self._current().by_key.get(key)

    def deployments(self, namespaces: Collection[str] | None = None) -> list[Deployment]:
        """Every deployment in `namespaces` (None: all), sorted by namespace and name."""
        with self._lock:
            return [d for d in self._current().deployments if namespaces is None or d.namespace in namespaces]

    def model_ids(self, namespaces: Collection[str] | None = None) -> dict[str, Deployment]:
        """The names clients may send (served names and adapters): the bare name when it is unique among the visible
        deployments, else `namespace/name`."""
        visible = self.deployments(namespaces)
        counts: dict[str, int] = {}
        for d in visible:
            for n in d.names:
                counts[n] = counts.get(n, 0) + 1
        return {(n if counts[n] == 1 else f"{d.namespace}/{n}"): d for d in visible for n in d.names}

    def lookup(self, model: str, namespaces: Collection[str] | None = None, namespace: str | None = None) -> Deployment:
        """The deployment a model name selects: its served name, or `namespace/servedName`; `namespace` (a header)
        narrows the search. Raises LookupFailed naming the models the caller may use."""
        with self._lock:
            named = self._current().by_name.get(model, ())
        found = [
            d
            for d in named
            if (namespaces is None or d.namespace in namespaces) and (namespace is None or d.namespace == namespace)
        ]
        if len(found) == 1:
            return found[0]
        visible = self.deployments(namespaces)
        if namespace is not None:
            visible = [d for d in visible if d.namespace == namespace]
        if not found and "/" in model:
            ns, _, name = model.partition("/")
            found = [d for d in visible if d.namespace == ns and name in d.names]
        if len(found) == 1:
            return found[0]
        if found:
            choices = [f"{d.namespace}/{model}" for d in found]
            raise LookupFailed(
                400,
                f"model {model!r} is served in several namespaces; name one: {', '.join(choices)} "
                "(or send the X-Infleet-Namespace header)",
                choices,
            )
        choices = sorted(self.model_ids(namespaces))
        where = f" in namespace {namespace!r}" if namespace is not None else ""
        served = ", ".join(repr(c) for c in choices) if choices else "none"
        raise LookupFailed(404, f"the model {model!r} does not exist{where}; served models: {served}", choices)
