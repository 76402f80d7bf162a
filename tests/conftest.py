"""Shared fixtures: tiny bundles built once per test session, offline, in seconds."""

import os

# One intra-op thread for the test models (and the CLI subprocesses, which inherit it): they are
# tiny, and on a shared 2-core machine two spin-waiting threads slow them down several-fold.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from ane_diffusion.memory import keep_freed_memory  # noqa: E402

keep_freed_memory()


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run heavy (full-size model) tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: opt in with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    from ane_diffusion.testing import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "teacher", seed=0)


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory):
    from ane_diffusion.testing import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "student", student=True, seed=1,
                            prediction_type="v_prediction", steps=4)
