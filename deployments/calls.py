"""Calls from the ingress to the stage deployments, retried when a replica dies under them.

Serve alone loses in-flight work on node loss (DESIGN.md: one of 60 requests got a 500 when a
worker was removed). Every stage call is idempotent, so retrying it on another replica is safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle

logger = logging.getLogger("ray.serve")

STAGE_CALL_ATTEMPTS = 3
RETRY_BACKOFF_SEC = 0.5


def resilient(handle: DeploymentHandle, method: str) -> Callable[..., Awaitable[Any]]:
    async def call(*args: Any) -> Any:
        for attempt in range(1, STAGE_CALL_ATTEMPTS + 1):
            try:
                return await getattr(handle, method).remote(*args)
            except (RayActorError, ActorUnavailableError) as error:
                if attempt == STAGE_CALL_ATTEMPTS:
                    raise
                logger.warning(
                    "%s.%s lost its replica (%s); retrying (%d)",
                    handle.deployment_name,
                    method,
                    error,
                    attempt,
                )
                await asyncio.sleep(RETRY_BACKOFF_SEC * attempt)
        raise AssertionError("unreachable")

    return call
