"""The ``scout.v1.Admin`` service: list experiments and policies, pause variants, reload the index, counters."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import grpc

from embeddings.index import IndexArtifact
from server.errors import FailedPrecondition, NotFound, Unavailable
from server.indexes import point_current
from server.pb import scout_pb2, scout_pb2_grpc
from server.service import _status
from server.validation import MAX_ID_CHARS, check_string, echo, listing

if TYPE_CHECKING:
    from server.app import ScoutServer


class AdminService(scout_pb2_grpc.AdminServicer):
    """Operations on the running server, set as :attr:`server` once it has started."""

    def __init__(self) -> None:
        self._server: ScoutServer | None = None

    @property
    def server(self) -> ScoutServer:
        """The server this service operates on."""
        if self._server is None:
            raise Unavailable("the server is still starting; retry")
        return self._server

    @server.setter
    def server(self, server: ScoutServer) -> None:
        self._server = server

    @_status
    async def ListExperiments(  # noqa: N802 - gRPC method name
        self, request: scout_pb2.ListExperimentsRequest, context: grpc.aio.ServicerContext
    ) -> scout_pb2.ListExperimentsResponse:
        """Every experiment with its variants, their policies, versions and pause state."""
        recommender = self.server.service.recommender
        paused = recommender.policies.paused
        response = scout_pb2.ListExperimentsResponse(
            index_version=recommender.index.version, config_version=recommender.config_version
        )
        for experiment in recommender.settings.experiments:
            info = response.experiments.add(
                name=experiment.name,
                surfaces=list(experiment.surfaces),
                salt=experiment.salt,
                candidates=experiment.candidates,
                context_keys=list(experiment.context_keys),
            )
            for variant in experiment.variants:
                policy = recommender.policies.get(experiment.name, variant.name)
                info.variants.add(
                    name=variant.name,
                    weight=variant.weight,
                    policy=variant.policy,
                    policy_version=int(policy.version),
                    params_json=json.dumps(dict(variant.params), sort_keys=True),
                    paused=(experiment.name, variant.name) in paused,
                )
        return response

    @_status
    async def SetVariantPaused(  # noqa: N802 - gRPC method name
        self, request: scout_pb2.SetVariantPausedRequest, context: grpc.aio.ServicerContext
    ) -> scout_pb2.SetVariantPausedResponse:
        """Pause or resume a variant everywhere; refuses to pause an experiment's last serving variant."""
        check_string("experiment", request.experiment, MAX_ID_CHARS)
        check_string("variant", request.variant, MAX_ID_CHARS)
        recommender = self.server.service.recommender
        experiment = next((e for e in recommender.settings.experiments if e.name == request.experiment), None)
        if experiment is None:
            names = [e.name for e in recommender.settings.experiments]
            raise NotFound(f"experiment {echo(request.experiment)} is not configured; have {listing(names)}")
        variants = [v.name for v in experiment.variants]
        if request.variant not in variants:
            raise NotFound(
                f"variant {echo(request.variant)} is not a variant of {experiment.name!r}: {listing(variants)}"
            )
        store = self.server.store
        paused = set(await store.paused())
        key = (experiment.name, request.variant)
        if request.paused and all((experiment.name, v) in paused | {key} for v in variants):
            raise FailedPrecondition(
                f"pausing {request.variant!r} would leave experiment {experiment.name!r} no variant"
            )
        await store.set_paused(experiment.name, request.variant, request.paused)
        now = await store.paused()
        recommender.policies.paused = now  # this process at once; the others at their next refresh
        return scout_pb2.SetVariantPausedResponse(paused=sorted(v for e, v in now if e == experiment.name))

    @_status
    async def ReloadIndex(  # noqa: N802 - gRPC method name
        self, request: scout_pb2.ReloadIndexRequest, context: grpc.aio.ServicerContext
    ) -> scout_pb2.ReloadIndexResponse:
        """Point ``CURRENT`` at ``version`` (when given) and swap in the version it names."""
        if request.version:  # the request is checked before the server's state, as every RPC does
            check_string("version", request.version, MAX_ID_CHARS)
        reloader = self.server.reloader
        if reloader is None:
            raise FailedPrecondition("the index is a single artifact, not a versions root: nothing to reload")
        if request.version:
            published = await asyncio.to_thread(IndexArtifact.versions, reloader.root)
            if request.version not in published:
                raise NotFound(f"version {echo(request.version)} is not published; have {listing(published)}")
            await asyncio.to_thread(point_current, reloader.root, request.version)
        swapped = await reloader.reload()
        version = self.server.service.recommender.index.version
        if request.version and version != request.version:
            raise FailedPrecondition(f"version {echo(request.version)} cannot be served (see the server log)")
        return scout_pb2.ReloadIndexResponse(index_version=version, swapped=swapped)

    @_status
    async def GetCounters(  # noqa: N802 - gRPC method name
        self, request: scout_pb2.GetCountersRequest, context: grpc.aio.ServicerContext
    ) -> scout_pb2.GetCountersResponse:
        """The answering process's decision and reward counts, fallbacks; the shared pending and learner counts."""
        service = self.server.service
        counters: dict[str, int] = dict(service.counters)
        counters["fallbacks"] = service.recommender.fallbacks
        counters["pending_decisions"], _, _ = await self.server.store.lags()
        learner: Any = await self.server.store.client.hgetall(self.server.store.learner)
        for name in ("applied", "skipped"):
            counters[f"learner/{name}"] = int(learner.get(name.encode(), 0))
        return scout_pb2.GetCountersResponse(counters=counters)

    @_status
    async def ReloadConfig(  # noqa: N802 - gRPC method name
        self, request: scout_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> scout_pb2.ReloadConfigResponse:
        """Reload the ``--config`` file now; a refused file answers FAILED_PRECONDITION with its reasons."""
        config = self.server.config
        if config is None:
            raise FailedPrecondition("the server was started without --config: there is no file to reload")
        before = config.version
        problems = await config.reload()
        if problems:
            text = "; ".join(problems)
            raise FailedPrecondition(f"config refused, {before} keeps serving: {text[:1500]}")
        return scout_pb2.ReloadConfigResponse(config_version=config.version, changed=config.version != before)
