"""The worker's Faust settings that measurements chose (no broker needed)."""

from __future__ import annotations

import asyncio
import gc
import logging

from dispatcher.worker.app import FETCH_MAX_WAIT_MS, Worker, WorkerConfig, build_app

CFG = WorkerConfig(bootstrap="127.0.0.1:1", web_port=6099)


def test_the_workers_consumer_lets_the_broker_hold_a_fetch_only_briefly() -> None:
    async def consumer_wait() -> int:
        app = build_app(CFG)
        thread = app.consumer._thread  # type: ignore[attr-defined]  # aiokafka driver only
        consumer = thread._create_worker_consumer(app.transport)  # the one it would start
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()
            thread.thread_loop.close()

    assert FETCH_MAX_WAIT_MS <= 10
    assert asyncio.run(consumer_wait()) == FETCH_MAX_WAIT_MS  # not Faust's 1,500 ms


def test_the_worker_keeps_the_configured_log_level_and_freezes_start_up_objects() -> None:
    async def check() -> None:
        worker = Worker(build_app(CFG), loglevel="warning", quiet=True)
        root = logging.getLogger()
        before = root.level
        root.setLevel(logging.WARNING)
        try:
            worker.on_setup_root_logger(root, logging.WARNING)
            assert root.level == logging.WARNING  # faust.Worker sets DEBUG here
            assert worker.spinner is None
            gc.unfreeze()
            await worker.on_startup_finished()
            assert gc.get_freeze_count() > 0
        finally:
            gc.unfreeze()
            root.setLevel(before)

    asyncio.run(check())
