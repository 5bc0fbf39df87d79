"""``Container``: the container a registered function runs in."""

from collections import namedtuple

__all__ = ["Container", "RUNTIMES", "container_document"]

#: The container runtimes an endpoint may run (the service checks the ``type`` too).
RUNTIMES = ("apptainer", "singularity", "charliecloud", "docker", "podman", "shifter", "bwrap")


class Container(namedtuple("Container", "type image options")):
    """A container image and the runtime that starts it::

        Container("apptainer", "/global/common/img/sci.sif", options="-B /pscratch")
        Container("charliecloud", "/var/tmp/images/sci")
        Container("bwrap", "/srv/images/sci")        # an unpacked root file system

    ``options`` is one shell-like string, passed to the runtime as written. The image
    needs only ``python3`` (3.8 or newer): the worker is sent over its stdin.
    """

    __slots__ = ()

    def __new__(cls, type, image, options=None):
        return super().__new__(cls, type, image, options)

    def to_json(self):
        """The ``container`` document of ``POST /v1/functions``."""
        document = {"type": self.type, "image": self.image}
        if self.options is not None:
            document["options"] = self.options
        return document


def container_document(container):
    """``container`` (a ``Container`` or a ``{type, image, options?}`` dict) as the
    document the service takes; a mistake is a ``ValueError`` or ``TypeError`` here,
    before any request."""
    if isinstance(container, Container):
        container = container.to_json()
    if not isinstance(container, dict):
        raise TypeError(
            "container must be a scifaas.Container or a dict {type, image, options?}, not %s"
            % type(container).__name__
        )
    unknown = sorted(set(container) - {"type", "image", "options"})
    if unknown:
        raise ValueError(
            "container has unknown keys %s; it takes type, image and options" % ", ".join(unknown)
        )
    runtime = container.get("type")
    if runtime not in RUNTIMES:
        raise ValueError(
            "container type %r is not a container runtime; known: %s"
            % (runtime, ", ".join(RUNTIMES))
        )
    image = container.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ValueError("container image must be a non-empty string, not %r" % (image,))
    options = container.get("options")
    if options is not None and not isinstance(options, str):
        raise TypeError(
            "container options must be one string (%r), not %s"
            % ("-B /scratch", type(options).__name__)
        )
    return dict(container)
