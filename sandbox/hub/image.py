"""Build the sandbox image without a container registry.

Three steps, each skipped when its result is current:

1. **base** — a Debian bookworm minbase with Python made by ``debootstrap`` and loaded with
   ``docker import`` (or, where a registry is reachable, any base named in ``base``, such as
   ``python:3.11-slim``);
2. **wheels** — every Python package of ``infra/sandbox-image/requirements.txt`` built into
   wheels on the host, so the image build itself runs with no network;
3. **image** — ``infra/sandbox-image/Dockerfile`` over a context of those wheels, the
   client library, the catalog's dummy data and the example notebooks. Docker's layer cache
   makes a rebuild with nothing changed take seconds.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
import sys
import tarfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from sandbox.errors import InputError, Unavailable
from sandbox.hub.settings import docker_url

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "infra" / "sandbox-image"
DEBIAN_BASE = "med-sandbox-base:bookworm"
IMAGE = "med-sandbox:latest"
MIRROR = "http://deb.debian.org/debian"
# Bookworm's Python and glibc: wheels are chosen for them, whatever the host runs.
TARGET_PYTHON = "3.11.2"
BOOKWORM_GLIBC_MINOR = 36
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# The client library is these modules of ``sandbox``; nothing of the gateway or data plane.
CLIENT_MODULES = ("__init__.py", "errors.py", "receipts.py", "secretfile.py", "units.py",
                  "client", "cohorts", "queries/__init__.py", "queries/spec.py",
                  "queries/checks.py")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    image: str
    image_id: str
    base: str
    size_mb: float
    steps: dict[str, str]


def build(client: docker.DockerClient, work_dir: Path, datasets_dir: Path,
          notebooks_dir: Path = ROOT / "notebooks", base: str | None = None,
          tag: str = IMAGE, progress: Progress = print) -> BuildResult:
    """Build (or refresh) the sandbox image and return what was built."""
    work_dir.mkdir(parents=True, exist_ok=True)
    steps: dict[str, str] = {}
    base_name = base or DEBIAN_BASE
    steps["base"] = _ensure_base(client, work_dir, progress) if base is None else "given"
    steps["wheels"] = _ensure_wheels(work_dir / "wheels", progress)
    context = _assemble_context(work_dir, datasets_dir, notebooks_dir)
    progress(f"image: building {tag} on {base_name}")
    image_id = _docker_build(client, context, tag, base_name, progress)
    steps["image"] = "built"
    client.images.prune(filters={"dangling": True})  # earlier builds' replaced layers
    size = client.images.get(image_id).attrs["Size"] / 1e6
    progress(f"image: {tag} ready ({image_id[7:19]}, {size:.0f} MB)")
    return BuildResult(tag, image_id, base_name, round(size, 1), steps)


def _ensure_base(client: docker.DockerClient, work_dir: Path, progress: Progress) -> str:
    try:
        client.images.get(DEBIAN_BASE)
        progress(f"base: reusing {DEBIAN_BASE}")
        return "reused"
    except docker.errors.ImageNotFound:
        pass
    if shutil.which("debootstrap") is None:
        raise Unavailable("debootstrap is not installed (apt-get install debootstrap), "
                          "or pass --base with an image a registry can provide")
    rootfs = work_dir / "rootfs"
    done = rootfs / ".debootstrap-complete"
    if not done.exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        progress(f"base: debootstrap bookworm minbase with {', '.join(BASE_PACKAGES)} (~40 s)")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
              "bookworm", str(rootfs), MIRROR], "debootstrap")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        done.touch()
    archive = work_dir / "rootfs.tar"
    progress("base: docker import")
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".", filter=lambda info: None
                if info.name == f"./{done.name}" else info)
    try:
        repository, tag = DEBIAN_BASE.split(":")
        client.api.import_image_from_file(str(archive), repository=repository, tag=tag)
    except docker.errors.APIError as exc:
        raise Unavailable(f"docker import failed: {exc.explanation}") from exc
    finally:
        archive.unlink(missing_ok=True)
    shutil.rmtree(rootfs, ignore_errors=True)
    return "built"


def _ensure_wheels(wheels: Path, progress: Progress) -> str:
    requirements = RECIPE / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()
                            + " ".join(_wheel_tags()).encode()).hexdigest()
    stamp = wheels / ".requirements.sha256"
    if stamp.exists() and stamp.read_text() == digest:
        progress(f"wheels: reusing {sum(1 for _ in wheels.glob('*.whl'))} wheels")
        return "reused"
    progress(f"wheels: fetching wheels for Python {TARGET_PYTHON} ({platform.machine()})")
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    _run([sys.executable, "-m", "pip", "download", "-q", "-r", str(requirements),
          "-d", str(wheels), *_wheel_tags()], "pip download")
    shutil.copy2(requirements, wheels / "requirements.txt")
    stamp.write_text(digest)
    return "built"


def _wheel_tags() -> list[str]:
    """pip options selecting binary wheels that run on the image's Python and glibc."""
    arch = platform.machine()
    tags = ["--only-binary=:all:", "--python-version", TARGET_PYTHON, "--implementation",
            "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    for minor in range(5, BOOKWORM_GLIBC_MINOR + 1):
        tags += ["--platform", f"manylinux_2_{minor}_{arch}"]
    for legacy in ("manylinux2014", "manylinux2010", "manylinux1"):
        tags += ["--platform", f"{legacy}_{arch}"]
    return tags


def _assemble_context(work_dir: Path, datasets_dir: Path, notebooks_dir: Path) -> Path:
    """The build context; unchanged files keep their bytes, so Docker's cache still hits."""
    context = work_dir / "context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    shutil.copy2(RECIPE / "Dockerfile", context / "Dockerfile")
    shutil.copytree(RECIPE / "etc", context / "etc")
    (context / "wheels").mkdir()
    for wheel in (work_dir / "wheels").iterdir():
        if not wheel.name.startswith("."):
            (context / "wheels" / wheel.name).hardlink_to(wheel)
    package = context / "lib" / "sandbox"
    package.mkdir(parents=True)
    for name in CLIENT_MODULES:
        source = ROOT / "sandbox" / name
        if source.is_dir():
            shutil.copytree(source, package / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, package / name)
    (context / "datasets").mkdir()
    if datasets_dir.is_dir():
        for dataset in sorted(p for p in datasets_dir.iterdir() if (p / "dummy").is_dir()):
            target = context / "datasets" / dataset.name
            shutil.copytree(dataset / "dummy", target / "dummy")
            shutil.copy2(dataset / "metadata.json", target / "metadata.json")
    if notebooks_dir.is_dir():
        shutil.copytree(notebooks_dir, context / "notebooks",
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    else:
        (context / "notebooks").mkdir()
    return context


def _docker_build(client: docker.DockerClient, context: Path, tag: str, base: str,
                  progress: Progress) -> str:
    image_id = ""
    recent: deque[str] = deque(maxlen=8)
    try:
        stream = client.api.build(path=str(context), tag=tag, buildargs={"BASE": base},
                                  network_mode="none", rm=True, forcerm=True, decode=True)
        for chunk in stream:
            if "error" in chunk:
                raise Unavailable(f"docker build failed: {chunk['error'].strip()}\n"
                                  + "\n".join(recent))
            line = chunk.get("stream", "").strip()
            if line:
                recent.append(line)
            if line.startswith("Step ") or line.startswith("---> Using cache"):
                progress(f"image: {line}")
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    except docker.errors.APIError as exc:
        raise Unavailable(f"docker build failed: {exc.explanation}") from exc
    if not image_id:
        raise Unavailable("docker build finished without an image")
    return image_id


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise Unavailable(f"{what} failed (exit {done.returncode}): {tail}")


def connect(docker_host: str) -> docker.DockerClient:
    """A Docker client for ``docker_host``, or a clear error if no engine answers."""
    if not docker_host:
        raise InputError("no Docker engine given (set SANDBOX_DOCKER_HOST or DOCKER_HOST)")
    try:
        client = docker.DockerClient(base_url=docker_url(docker_host), timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        raise Unavailable(f"no Docker engine answers at {docker_host} "
                          "(start one with infra/scripts/docker.sh start)") from exc
    return client
