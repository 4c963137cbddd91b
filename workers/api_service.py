"""``genre api``: the pull API as its own process (docs/api.md says why not the worker)."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from genre.core.config import GenreConfig
from genre.core.features import FeatureSpec
from genre.workers.api_events import EventSender
from genre.workers.api_follower import ApiFollower
from genre.workers.api_http import ApiState, build_app
from genre.workers.api_views import CoClickGraph, ContentIndex, LatestLists

log = logging.getLogger("genre.api")


def build_state(config: GenreConfig) -> ApiState:
    """The views, the follower that fills them (started) and the click sender."""
    lists = LatestLists()
    index = ContentIndex(config.encoder.dim)
    graph = CoClickGraph(FeatureSpec.from_streams(config.streams).graph_rules())
    follower = ApiFollower(config, lists, index, graph).start()
    return ApiState(config.api, lists, index, graph, follower, EventSender(config))


async def serve(config: GenreConfig, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then close the follower and flush the sender."""
    state = build_state(config)
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.api.bind, config.api.port, backlog=1024).start()
        log.info("genre api on http://%s:%d/v1", config.api.bind, config.api.port)
        await stop.wait()
    finally:
        await runner.cleanup()
        if state.follower is not None:
            state.follower.stop()
        if state.sender is not None:
            state.sender.close()


def run_api(config: GenreConfig) -> None:
    """Run the API until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    asyncio.run(main())
