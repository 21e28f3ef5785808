"""The encoder self-test's argv: qsv and vaapi open the pool's render node, not a fixed one."""

from __future__ import annotations

import pytest

from ffrtmp.worker.selftest import self_test_argv

pytestmark = pytest.mark.unit


def test_vaapi_opens_the_render_device_it_is_given() -> None:
    argv = self_test_argv("vaapi", render_device="/dev/dri/renderD129")
    assert argv[argv.index("-vaapi_device") + 1] == "/dev/dri/renderD129"


def test_qsv_derives_its_device_from_the_render_node() -> None:
    argv = self_test_argv("qsv", render_device="/dev/dri/renderD130")
    assert argv[argv.index("-init_hw_device") + 1] == "qsv=hw:hw_any,child_device=/dev/dri/renderD130"


@pytest.mark.parametrize("accelerator", ["cpu", "nvenc"])
def test_other_encoders_open_no_render_node(accelerator: str) -> None:
    assert not any("/dev/dri" in arg for arg in self_test_argv(accelerator, render_device="/dev/dri/renderD130"))
