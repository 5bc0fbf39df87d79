"""Functions registered with a container: the SDK's checks, the service's record, and a
run through the whole stack inside a real bubblewrap container.

The run needs the images of ``scripts/build-test-image.sh`` (``$SCIFAAS_TEST_IMAGES``,
default ``target/test-images``) and ``bwrap``; without them it is skipped, or fails when
``SCIFAAS_REQUIRE_CONTAINERS=1``.
"""

import os
import shutil
from pathlib import Path

import pytest

from scifaas import Container
from scifaas.container import container_document

REPO_DIR = Path(__file__).resolve().parent.parent.parent.parent
RESULT_TIMEOUT = 60


def test_a_container_is_a_named_tuple_or_a_dict():
    sci = Container("apptainer", "/img/sci.sif", options="-B /scratch")
    assert sci.to_json() == {"type": "apptainer", "image": "/img/sci.sif", "options": "-B /scratch"}
    assert Container("bwrap", "/img").to_json() == {"type": "bwrap", "image": "/img"}
    assert container_document(sci) == sci.to_json()
    assert container_document({"type": "docker", "image": "python:3.11"}) == {
        "type": "docker",
        "image": "python:3.11",
    }


@pytest.mark.parametrize(
    "bad, error, says",
    [
        ({"type": "lxc", "image": "x"}, ValueError, "known: apptainer"),
        ({"type": "bwrap", "image": ""}, ValueError, "non-empty"),
        ({"type": "bwrap", "image": "/i", "gpus": 1}, ValueError, "unknown keys gpus"),
        ({"type": "bwrap", "image": "/i", "options": ["-B", "/x"]}, TypeError, "one string"),
        ("bwrap:/img", TypeError, "scifaas.Container or a dict"),
    ],
)
def test_a_wrong_container_is_refused_before_any_request(bad, error, says):
    with pytest.raises(error, match=says):
        container_document(bad)


def read_marker(_=None):
    """What only the test images have: the name of the image."""
    with open("/scifaas-test-image") as f:
        return f.read().strip()


def test_the_service_keeps_a_functions_container(client):
    spec = Container("charliecloud", "/var/tmp/sci", options="-b /data")
    function_id = client.register_function(read_marker, container=spec)
    assert client.get_function(function_id)["container"] == spec.to_json()
    plain = client.register_function(read_marker)
    assert client.get_function(plain)["container"] is None


def images_or_skip():
    """The test images' folder, or a skip saying how to get them."""
    images = Path(os.environ.get("SCIFAAS_TEST_IMAGES") or REPO_DIR / "target" / "test-images")
    marker = images / "a" / "scifaas-test-image"
    missing = [] if marker.is_file() else [str(marker)]
    if shutil.which("bwrap") is None:
        missing.append("bwrap on PATH")
    if missing:
        why = (
            "container test not run: missing %s. Run scripts/build-test-image.sh (as root), "
            "or point SCIFAAS_TEST_IMAGES at a folder it built" % ", ".join(missing)
        )
        if os.environ.get("SCIFAAS_REQUIRE_CONTAINERS") == "1":
            pytest.fail(why + " (SCIFAAS_REQUIRE_CONTAINERS=1 makes this a failure)")
        pytest.skip(why + "; set SCIFAAS_REQUIRE_CONTAINERS=1 to make this a failure")
    return images


def test_a_function_registered_with_a_bwrap_container_runs_inside_it(client, endpoint):
    images = images_or_skip()
    in_a = client.register_function(read_marker, container=Container("bwrap", str(images / "a")))
    in_b = client.register_function(
        read_marker, container={"type": "bwrap", "image": str(images / "b")}
    )
    task_a = client.run(endpoint=endpoint, function_id=in_a)
    task_b = client.run(endpoint=endpoint, function_id=in_b)
    assert client.get_result(task_a, timeout=RESULT_TIMEOUT) == "a"
    assert client.get_result(task_b, timeout=RESULT_TIMEOUT) == "b"
    # Warm: the same containers answer again.
    assert client.invoke(endpoint, in_a, None, timeout=RESULT_TIMEOUT) == "a"
