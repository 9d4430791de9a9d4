"""The python tool: persistent state, preloaded images, image capture, caps, timeouts, pool."""

from __future__ import annotations

import os
import threading
import time

import pytest
from PIL import Image

from metis.tools import PythonTool, ToolBox


@pytest.fixture(scope="module")
def tool():
    t = PythonTool(timeout_s=2, pool_size=2, max_output_chars=300, max_pixels=256 * 256,
                   min_pixels=4096, max_images_per_call=3)
    yield t
    t.close()


@pytest.fixture()
def box(tool):
    return ToolBox([tool], max_calls_per_trajectory=50)


def run(box, traj, code):
    return box.execute(traj, "python", {"code": code})


def test_state_images_and_output_format(box):
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    box.start("s1", [img, Image.new("RGB", (10, 10))])
    obs = run(box, "s1", "x = 41\nprint(image_1.size, image_2.size, image_1.getpixel((0, 0)))")
    assert obs.error is None
    assert obs.text == "Code execution result:\n(200, 100) (10, 10) (255, 0, 0)\n"
    assert run(box, "s1", "print(x + 1)").text.endswith("42\n")
    obs = run(box, "s1", "import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert obs.text == "Code execution result:\nout\nerr\n"
    obs = run(box, "s1", "1 / 0")
    assert obs.error == "execution_error" and "ZeroDivisionError" in obs.text and not obs.images
    assert run(box, "s1", "print(x)").text.endswith("41\n")  # the interpreter survived
    box.end("s1")


def test_every_way_of_showing_an_image(box):
    box.start("s2", [Image.new("RGB", (1000, 700), (0, 0, 255))])
    cases = {
        "last expression": "image_1.crop((0, 0, 500, 500))",
        "display": "display(image_1)",
        "img.show": "image_1.show()",
        "plt.show": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
        "open figure": "import matplotlib.pyplot as plt\nplt.imshow(image_1)",
        "numpy": "import numpy as np\ndisplay(np.zeros((64, 64, 3), dtype=np.uint8))",
    }
    for label, code in cases.items():
        obs = run(box, "s2", code)
        assert obs.error is None, (label, obs.text)
        assert len(obs.images) == 1, label
        assert obs.text.endswith("\nImages:\n<image>"), label
        w, h = obs.images[0].size
        assert w % 32 == 0 and h % 32 == 0 and 4096 <= w * h <= 256 * 256, (label, w, h)
    obs = run(box, "s2", "for _ in range(5): display(image_1)")
    assert len(obs.images) == 3 and obs.text.count("<image>") == 3 and "2 more image" in obs.text
    obs = run(box, "s2", "display(image_1)\nraise ValueError('late')")
    assert obs.error == "execution_error" and obs.images == [] and "<image>" not in obs.text
    tiny = run(box, "s2", "image_1.resize((3, 3))")
    assert tiny.images[0].size[0] * tiny.images[0].size[1] >= 4096
    box.end("s2")


def test_output_caps_and_placeholder_escape(box):
    box.start("s3", [])
    obs = run(box, "s3", "print('y' * 100000)")
    assert "[output truncated" in obs.text and len(obs.text) < 1000
    obs = run(box, "s3", "import os\nos.write(1, b'z' * 50000)")
    assert "[output truncated" in obs.text and len(obs.text) < 1500
    obs = run(box, "s3", "print('<image>' * 3)")
    assert obs.images == [] and "<image>" not in obs.text and "[image]" in obs.text
    obs = run(box, "s3", "import subprocess\nsubprocess.run(['echo', 'from-child'])")
    assert "from-child" in obs.text
    box.end("s3")


def test_timeout_restarts_with_fresh_state(box):
    box.start("s4", [Image.new("RGB", (40, 40), "green")])
    run(box, "s4", "keep = 1")
    t0 = time.monotonic()
    obs = run(box, "s4", "while True: pass")
    assert obs.error == "timeout" and 1.9 < time.monotonic() - t0 < 6
    assert "state" in obs.text and "lost" in obs.text
    after = run(box, "s4", "print('keep' in globals(), image_1.size)")
    assert after.error is None and after.text.endswith("False (40, 40)\n")
    box.end("s4")


def test_trajectories_are_isolated_and_cleaned_up(box, tool):
    box.start("a", [])
    box.start("b", [])
    run(box, "a", "secret = 'A'\nopen('note.txt', 'w').write('A')")
    obs = run(box, "b", "import os\nprint('secret' in globals(), os.path.exists('note.txt'))")
    assert obs.text.endswith("False False\n")
    interp = tool._trajs["a"].interp
    scratch = interp.scratch
    pid = interp.proc.pid if interp.proc is not None else None  # None: forked by the zygote
    assert os.path.isdir(scratch)
    box.end("a")
    box.end("b")
    deadline = time.monotonic() + 5  # interpreters are stopped by a background reaper
    while os.path.exists(scratch) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(scratch)
    assert not interp.alive
    if pid is not None:
        assert interp.proc.poll() is not None and not os.path.exists(f"/proc/{pid}")
    if interp.uid is not None:  # every process of the sandbox uid is gone
        def uid_of(entry):
            try:
                with open(f"/proc/{entry}/status") as fh:
                    return next(int(ln.split()[1]) for ln in fh if ln.startswith("Uid:"))
            except (OSError, StopIteration):
                return None
        while any(uid_of(e) == interp.uid for e in os.listdir("/proc") if e.isdigit()):
            assert time.monotonic() < deadline + 5
            time.sleep(0.05)


def test_interpreters_survive_the_thread_that_asked_for_them():
    """PR_SET_PDEATHSIG is per thread: an interpreter started for a short-lived pool thread
    (no warm pool, so it is started on demand) must not die with that thread."""
    cold = PythonTool(pool_size=0)
    box = ToolBox([cold])
    box.start("th", [])
    done = threading.Thread(target=run, args=(box, "th", "v = 7"))
    done.start()
    done.join()
    time.sleep(0.3)
    assert run(box, "th", "print(v)").text.endswith("7\n")
    box.close()


def test_warm_pool_start_is_fast_and_lazy(tool):
    assert tool.pool.wait_full(60)
    t0 = time.monotonic()
    tool.start("fast", [Image.new("RGB", (64, 64))])
    assert time.monotonic() - t0 < 0.05
    t0 = time.monotonic()
    obs = tool.call("fast", {"code": "print(image_1.size)"})
    assert obs.error is None and time.monotonic() - t0 < 1.0
    tool.end("fast")


def test_closed_tool_and_bad_arguments():
    t = PythonTool(pool_size=0)
    assert t.call("x", {"code": 5}).error == "parse_error"
    t.close()
    assert t.call("x", {"code": "1"}).error == "execution_error"


def test_eager_start_and_eviction_beyond_max_live():
    tool = PythonTool(pool_size=0, eager_start=True, max_live_interpreters=1)
    tool.start("a", [])
    assert tool._trajs["a"].interp is not None  # eager: attached at start
    assert tool.call("a", {"code": "x = 1"}).error is None
    tool.start("b", [])  # needs room: a's idle interpreter is stopped
    assert tool.live_interpreters() == 1 and tool._trajs["a"].interp is None
    obs = tool.call("a", {"code": "print(x)"})
    assert obs.error == "execution_error" and "state is lost" in obs.text and "NameError" in obs.text
    tool.close()
