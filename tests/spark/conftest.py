"""Fixtures of the Spark tests: the driver's environment, a standalone cluster, a messy source.

The tests need Java (Spark runs on a JVM). Without it they fail with the reason: a machine
that cannot run them must not pass by skipping them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import get_settings
from tests.spark import messy
from tests.spark.cluster import StandaloneCluster, java_problem

# Small splits (2 MB), so the synthetic Observation file (about 17 MB) is read by several
# tasks, and problems and copies of one resource fall in different splits.
SUBMIT_ARGS = (
    "--conf spark.sql.files.maxPartitionBytes=2097152 "
    "--conf spark.sql.files.openCostInBytes=262144 pyspark-shell"
)


@pytest.fixture(scope="session", autouse=True)
def spark_driver_environment() -> Iterator[None]:
    """This process is the Spark driver: it binds to 127.0.0.1, its executors run this
    interpreter. Set before the first session starts the JVM, which reads them once."""
    problem = java_problem()
    if problem is not None:
        pytest.fail(f"the Spark tests cannot run here: {problem}", pytrace=False)
    saved = {
        name: os.environ.get(name)
        for name in (
            "SPARK_LOCAL_IP",
            "PYSPARK_PYTHON",
            "PYSPARK_SUBMIT_ARGS",
            "PRESCREEN_MAX_LINE_BYTES",
        )
    }
    os.environ.update(
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_SUBMIT_ARGS=SUBMIT_ARGS,
        # Both executors skip the messy hospital's long lines (a few MB, not 16).
        PRESCREEN_MAX_LINE_BYTES=str(messy.LINE_LIMIT),
    )
    get_settings.cache_clear()
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    started = StandaloneCluster(tmp_path_factory.mktemp("spark-cluster")).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def messy_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return messy.build(tmp_path_factory.mktemp("messy-hospital"))
