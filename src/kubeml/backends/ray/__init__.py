"""The Ray backend and its object-store stores; the only package that imports `ray`.

- `backend`: `RayBackend`, the `FunctionBackend` that runs invocations in Ray actors
- `function_actor`: the `FunctionActor`, what runs on a Ray worker
- `actor_relay`: the control plane's end of an actor's relay (transports, hooks, Ray errors)
- `actor_pool`: the actors, started where they fit and kept warm in a `WorkerPool`
- `placement`: where functions fit, pure arithmetic over a snapshot of the nodes
- `cluster`: Ray start-up, and the calls that read that snapshot
- `rounds`: a direct socket for a train invocation's rounds
- `round_links`, `node_relay`, `relay_pool`: a relay on each node for its functions' rounds
- `stores`: the datasets and weights, through Ray's object store
"""

from kubeml.errors import MissingDependencyError

try:
    import ray  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "the ray backend needs Ray, an optional extra: pip install 'kubeml[ray]'"
    ) from exc

from kubeml.backends.ray.backend import RayBackend

__all__ = ["RayBackend"]
