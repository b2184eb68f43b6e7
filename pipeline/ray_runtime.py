"""The one place that connects to Ray.

``RAY_ADDRESS`` or ``ray.address`` in the config joins that cluster. Otherwise a private local Ray
starts bound to 127.0.0.1 with a bounded object store. Ray 2.60 binds to the machine's external
address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set (verified on this kind of machine), so we
set it before Ray is imported; a laptop run must never listen on the network.

Token authentication is asked for explicitly (``RAY_AUTH_MODE=token``): Ray then creates
``~/.ray/auth_token`` for a new local cluster and a client sends it, and it does not print its
"token authentication is enabled by default" warning on every start. A user's own setting wins (a
cluster started with auth disabled needs ``RAY_AUTH_MODE=disabled`` in the client's environment).
"""

from __future__ import annotations

import logging
import os
from typing import Any

LOOPBACK = "127.0.0.1"

_RAY_ENV_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_DEDUP_LOGS": "1",
    "RAY_AUTH_MODE": "token",
    # Ray Train's placement-group cleaner polls the State API every second; a local Ray without a
    # dashboard has none, so it logs this line each time. Only this message is dropped.
    "RAY_DEDUP_LOGS_SKIP_REGEX": "Failed to query Ray Train Controller actor state",
}

log = logging.getLogger("dapt.ray")
_owned = False


def ray_env() -> None:
    """Environment Ray must see before it is imported (idempotent; user settings win)."""
    for k, v in _RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


ray_env()


def init_ray(ray_cfg: Any = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Connect to (or start) Ray once per process. Returns how it connected, for manifests."""
    import ray

    if ray.is_initialized():
        return {"address": "existing", "node_ip": ray.util.get_node_ip_address()}
    address = os.environ.get("RAY_ADDRESS") or (getattr(ray_cfg, "address", None) if ray_cfg else None)
    global _owned
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return {"address": address, "node_ip": ray.util.get_node_ip_address()}
    store_gb = getattr(ray_cfg, "object_store_memory_gb", 1.5) if ray_cfg else 1.5
    cpus = num_cpus or (getattr(ray_cfg, "num_cpus", None) if ray_cfg else None) or os.cpu_count() or 1
    ray.init(
        address="local",
        num_cpus=cpus,
        object_store_memory=int(store_gb * (1 << 30)),
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    _owned = True
    ip = ray.util.get_node_ip_address()
    if ip != LOOPBACK:
        ray.shutdown()
        raise RuntimeError(f"local Ray bound to {ip}, not {LOOPBACK}; refusing to run on the network")
    log.info("started local Ray on %s (%d CPUs, %.1f GB object store)", ip, cpus, store_gb)
    return {"address": "local", "node_ip": ip, "num_cpus": cpus}


def shutdown_ray() -> None:
    """Stop Ray if this process started it."""
    global _owned
    import ray

    if _owned and ray.is_initialized():
        ray.shutdown()
    _owned = False
