"""The local Ray the jobs and benchmarks start: with the dashboard, or without it and without its log flood."""
from __future__ import annotations

import importlib
import logging

import pytest

from pipeline.executors.ray_runtime import PLACEMENT_GROUP_CLEANER_LOGGER, local_ray_kwargs


@pytest.fixture
def cleaner_logger():
    logger = logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER)
    level = logger.level
    yield logger
    logger.setLevel(level)


def test_the_silenced_logger_is_where_ray_train_defines_the_cleaner():
    # A Ray upgrade that moves the cleaner would silently bring the flood back: fail here instead.
    module = importlib.import_module(PLACEMENT_GROUP_CLEANER_LOGGER)
    assert hasattr(module, "PlacementGroupCleaner")
    assert module.logger.name == PLACEMENT_GROUP_CLEANER_LOGGER


def test_without_dashboard_workers_drop_the_cleaners_warnings_but_keep_its_errors(cleaner_logger):
    kwargs = local_ray_kwargs(include_dashboard=False)
    assert kwargs["include_dashboard"] is False
    cleaner_logger.setLevel(logging.NOTSET)
    assert cleaner_logger.isEnabledFor(logging.WARNING)
    kwargs["runtime_env"]["worker_process_setup_hook"]()
    assert not cleaner_logger.isEnabledFor(logging.WARNING)
    assert cleaner_logger.isEnabledFor(logging.ERROR)


def test_with_dashboard_nothing_is_silenced_and_it_listens_on_localhost_only():
    kwargs = local_ray_kwargs(include_dashboard=True)
    assert kwargs == {"include_dashboard": True, "dashboard_host": "127.0.0.1"}
