"""The guest of the power-cut harness: a small Debian 12 that boots relay from this checkout.

Built in two parts, so that a rerun costs seconds:

- **cached** (built once, under :func:`cache_dir`, keyed by what went into it):
  ``rootfs-<key>/``: ``debootstrap --variant=minbase`` of bookworm with python3, systemd as
  PID 1 and a venv ``/opt/relay`` holding relay's dependencies from ``pyproject.toml`` (the
  key hashes that list and :data:`ROOTFS_RECIPE`); ``kernel-<package>/``: Debian's cloud
  kernel, the few modules the guest needs and a static busybox.
- **per run** (:func:`prepare`): a copy of that rootfs with this checkout ``pip install
  --no-deps``-ed into the venv, the run's ``/etc/relay.toml`` and unit, made into an ext4
  image with ``mkfs.ext4 -d`` (no loop device, no mount); an empty ext4 data disk for the
  spool; a tiny initramfs.

Why a hand-made initramfs: Debian's cloud kernel has ext4 built in but virtio (PCI, block,
net) as modules, so something must load them before the root can be mounted. Its ``/init``
(:data:`INIT`, busybox) loads exactly those modules, mounts the root read-only and the data
disk on ``/var/lib/relay``, configures the network (slirp's fixed 10.0.2.15/24), then
``switch_root``\\ s to systemd. That keeps udev, initramfs-tools and networkd out of a boot
that runs under TCG about a hundred times per proof: the whole initramfs is ~1.5 MB.

The root disk is read-only (to the guest and to qemu): the only state that survives a power
cut is the data disk's, which is the spool's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
KERNEL_META = "linux-image-cloud-amd64"  # depends on the current ABI's package
# Debian packages of the rootfs beyond minbase, and the tools the venv build needs there.
GUEST_PACKAGES = ["python3", "python3-venv", "systemd", "systemd-sysv"]
# Changing how the rootfs is made must change its cache key: bump this.
ROOTFS_RECIPE = (
    f"2: {SUITE} minbase + {','.join(GUEST_PACKAGES)}; venv /opt/relay + build requires (upgraded)"
)
# The modules /init loads (their dependencies come first, from modules.dep).
MODULES = ["virtio_pci", "virtio_blk", "virtio_net"]
GUEST_IP = "10.0.2.15"  # qemu user-mode networking's guest address; the host is 10.0.2.2
HOST_IP = "10.0.2.2"
STATE_DIR = "/var/lib/relay"
HOST_CA = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")

INIT = f"""#!/bin/busybox sh
# The power-cut guest's initramfs (tests/powercut/image.py): load virtio, mount the read-only
# root and the data disk, configure slirp's fixed address, hand over to systemd.
export PATH=/bin
busybox mkdir -p /proc /sys /dev /newroot
busybox mount -t proc proc /proc
busybox mount -t devtmpfs dev /dev
for m in $(busybox cat /modules); do busybox insmod /lib/modules/$m.ko || echo "init: $m?"; done
for i in $(busybox seq 100); do [ -b /dev/vdb ] && break; busybox usleep 50000; done
busybox mount -t ext4 -o ro /dev/vda /newroot || {{ echo "init: no root"; exec busybox sh; }}
# The spool's disk, with ext4's defaults (data=ordered, barriers, 5 s commit) as on a Pi.
busybox mount -t ext4 /dev/vdb /newroot{STATE_DIR} || {{ echo "init: no data disk"; exec busybox sh; }}
busybox ip link set lo up
busybox ip link set eth0 up
busybox ip addr add {GUEST_IP}/24 dev eth0
busybox ip route add default via {HOST_IP}
busybox umount /proc
busybox mount --move /dev /newroot/dev
exec busybox switch_root /newroot /sbin/init
"""

UNIT = """[Unit]
Description=relay (power-cut guest)
After=local-fs.target

[Service]
Type=notify
ExecStart=/opt/relay/bin/relay run --config /etc/relay.toml
Environment=PYTHONUNBUFFERED=1
Restart=always
RestartSec=1
# 78: a config relay refuses (an unknown [spool] key): do not loop, the host reads the exit.
RestartPreventExitStatus=78

[Install]
WantedBy=multi-user.target
"""

JOURNALD = """[Journal]
# In RAM only: the root disk is read-only, and the spool is what the test is about.
Storage=volatile
# Every journal line (relay's included) goes to the serial console, where the host reads
# when relay started and subscribed in each boot.
ForwardToConsole=yes
MaxLevelConsole=info
"""

# Units of a minbase Debian that would only slow a TCG boot or fail on a read-only root.
MASKED = [
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
    "getty.target",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-random-seed.service",
    "systemd-update-utmp.service",
    "systemd-journal-flush.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-networkd.service",
    "systemd-timesyncd.service",
]


class ImageError(RuntimeError):
    """The guest cannot be built here; the message says why (for a skip or a failure)."""


@dataclass(frozen=True)
class Kernel:
    """A kernel, the modules the initramfs loads (in load order) and a static busybox."""

    vmlinuz: Path
    modules: list[Path]
    busybox: Path


@dataclass(frozen=True)
class GuestImage:
    """What :func:`prepare` made for one run: boot these with :class:`~tests.powercut.guest.Guest`."""

    kernel: Path
    initrd: Path
    root: Path  # ext4, read-only to the guest
    data: Path  # ext4, the spool's disk (state_dir), fresh per run


def cache_dir() -> Path:
    """``$RELAY_POWERCUT_CACHE``, else ``$XDG_CACHE_HOME/relay-powercut`` (``~/.cache``):
    outside the checkout, so that it survives a fresh clone (CI)."""
    if os.environ.get("RELAY_POWERCUT_CACHE"):
        return Path(os.environ["RELAY_POWERCUT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relay-powercut"


def missing_tools() -> str | None:
    """Why no guest can be built or booted here, or None. Checked before anything starts."""
    if os.geteuid() != 0:
        return "building the guest needs root (debootstrap, chroot)"
    for tool, package in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("debootstrap", "debootstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
    ]:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if os.uname().machine != "x86_64":
        return f"the guest is amd64 and the host is {os.uname().machine}"
    return None


def dependencies() -> list[str]:
    """relay's runtime dependencies, as ``pyproject.toml`` lists them."""
    with open(REPO / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def build_requires() -> list[str]:
    """What building relay needs (``[build-system] requires``), installed in the guest's venv
    so that the checkout installs there without build isolation (no network per run)."""
    with open(REPO / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["build-system"]["requires"])


def rootfs_key() -> str:
    """What the cached rootfs depends on: the recipe and the dependency lists."""
    text = json.dumps([ROOTFS_RECIPE, sorted(dependencies()), sorted(build_requires())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run(argv: Sequence[str | Path], what: str, **kw: object) -> str:
    """Run a build step; its stdout. A failure raises :class:`ImageError` with the output."""
    done = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        **kw,  # type: ignore[call-overload]
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise ImageError(f"{what} failed ({done.returncode}):\n{tail}")
    return str(done.stdout)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: two runs (CI and a developer) build once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _chroot(root: Path, *argv: str, what: str) -> str:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    return _run(["chroot", root, *argv], what, env=env)


# ------------------------------------------------------------------------------ cached parts


def rootfs(log: io.TextIOBase | None = None) -> Path:
    """The cached rootfs for the current dependency list, built first if missing
    (debootstrap and pip in a chroot: minutes; see the README's figures)."""
    cache = cache_dir()
    final = cache / f"rootfs-{rootfs_key()}"
    with _locked(cache / ".lock"):
        if (final / ".complete").exists():
            return final
        started = time.monotonic()
        _say(log, f"building the guest's rootfs in {final} (once; a few minutes)")
        work = Path(tempfile.mkdtemp(prefix="rootfs-build-", dir=cache))
        try:
            _run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(GUEST_PACKAGES)}",
                    SUITE,
                    work,
                    MIRROR,
                ],
                "debootstrap",
            )
            _say(log, f"  debootstrap done after {time.monotonic() - started:.0f}s")
            # pip inside reaches the package index as the host does: the host's resolver
            # and its CA bundle (which may hold a proxy's CA), both removed afterwards.
            shutil.copy("/etc/resolv.conf", work / "etc/resolv.conf")
            shutil.copy(HOST_CA, work / "tmp/host-ca.crt")
            _chroot(work, "python3", "-m", "venv", "/opt/relay", what="python3 -m venv")
            pip = ["/opt/relay/bin/pip", "install", "--no-cache-dir", "--quiet"]
            pip += ["--cert", "/tmp/host-ca.crt"]
            # --upgrade: the venv comes with Debian's setuptools 66, which satisfies
            # pyproject's "setuptools>=64" but cannot read its `license = "MIT"` (PEP 639
            # needs 77): take the newest, as pip's build isolation would.
            _chroot(work, *pip, "--upgrade", *build_requires(), what="pip install (build)")
            _chroot(work, *pip, *dependencies(), what="pip install (deps)")
            (work / "tmp/host-ca.crt").unlink()
            (work / "etc/resolv.conf").write_text("")  # the guest resolves nothing
            for junk in ["var/cache/apt/archives", "var/lib/apt/lists"]:
                for p in (work / junk).glob("*"):
                    if p.is_file():
                        p.unlink()
            (work / ".complete").write_text(ROOTFS_RECIPE + "\n" + "\n".join(dependencies()))
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        _say(log, f"  rootfs ready after {time.monotonic() - started:.0f}s")
        return final


def kernel(log: io.TextIOBase | None = None) -> Kernel:
    """Debian's cloud kernel (the package ``linux-image-cloud-amd64`` points at), its virtio
    modules and busybox-static, fetched with ``apt-get download`` once and cached."""
    cache = cache_dir()
    package = _kernel_package()
    final = cache / f"kernel-{package}"
    with _locked(cache / ".lock"):
        if not (final / ".complete").exists():
            _say(log, f"fetching {package} and busybox-static into {final}")
            work = Path(tempfile.mkdtemp(prefix="kernel-build-", dir=cache))
            try:
                _fetch_kernel(package, work)
                if final.exists():
                    shutil.rmtree(final)
                work.rename(final)
            finally:
                if work.exists():
                    shutil.rmtree(work, ignore_errors=True)
    order = (final / "modules.order").read_text().split()
    return Kernel(
        vmlinuz=final / "vmlinuz",
        modules=[final / "modules" / f"{m}.ko" for m in order],
        busybox=final / "busybox",
    )


def _kernel_package() -> str:
    out = _run(["apt-cache", "depends", KERNEL_META], f"apt-cache depends {KERNEL_META}")
    found = re.search(r"Depends: (linux-image-\S+-cloud-amd64)", out)
    if found is None:
        raise ImageError(f"{KERNEL_META} is unknown to apt here (apt-get update?)")
    return found.group(1)


def _fetch_kernel(package: str, work: Path) -> None:
    debs = work / "debs"
    debs.mkdir()
    _run(["apt-get", "download", package, "busybox-static"], "apt-get download", cwd=debs)
    for deb in debs.glob("*.deb"):
        _run(["dpkg-deb", "-x", deb, debs / "x"], f"dpkg-deb -x {deb.name}")
    x = debs / "x"
    shutil.copy(next((x / "boot").glob("vmlinuz-*")), work / "vmlinuz")
    shutil.copy(x / "bin/busybox", work / "busybox")
    moddir = next((x / "lib/modules").iterdir())
    files = {ko.name.split(".ko")[0].replace("-", "_"): ko for ko in moddir.rglob("*.ko")}
    order: list[str] = []
    for name in MODULES:
        _load_order(name, files, order)
    (work / "modules").mkdir()
    for name in order:
        shutil.copy(files[name], work / "modules" / f"{name}.ko")
    (work / "modules.order").write_text("\n".join(order) + "\n")
    shutil.rmtree(debs)
    (work / ".complete").write_text(package + "\n")


def _depends(ko: Path) -> list[str]:
    """The modules ``ko`` needs, from its .modinfo section (the package has no modules.dep:
    depmod makes it at install time)."""
    found = re.search(rb"depends=([^\0]*)\0", ko.read_bytes())
    return [d for d in found.group(1).decode().split(",") if d] if found else []


def _load_order(name: str, files: dict[str, Path], order: list[str]) -> None:
    """Append ``name`` to ``order`` after what it depends on (depth first)."""
    if name in order:
        return
    if name not in files:
        raise ImageError(f"module {name} is not in this kernel package")
    for dep in _depends(files[name]):
        _load_order(dep, files, order)
    order.append(name)


# ------------------------------------------------------------------------------ per run


def prepare(
    workdir: Path, relay_toml: str, *, data_size_mb: int = 64, log: io.TextIOBase | None = None
) -> GuestImage:
    """The run's images in ``workdir``: the cached rootfs plus this checkout and
    ``relay_toml`` as ``/etc/relay.toml``; a fresh data disk; the initramfs."""
    base = rootfs(log)
    kern = kernel(log)
    workdir.mkdir(parents=True, exist_ok=True)
    stage = workdir / "rootfs"
    if stage.exists():
        shutil.rmtree(stage)
    _run(["cp", "-a", "--reflink=auto", base, stage], "copying the cached rootfs")
    _install_checkout(stage)
    _configure(stage, relay_toml)
    root = workdir / "root.img"
    size_mb = _du_mb(stage) + 128
    _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", stage, root, f"{size_mb}M"], "mkfs root")
    shutil.rmtree(stage)
    data = workdir / "data.img"
    _run(["mkfs.ext4", "-q", "-F", "-L", "relay", data, f"{data_size_mb}M"], "mkfs data")
    initrd = workdir / "initrd.img"
    initrd.write_bytes(_initramfs(kern))
    return GuestImage(kernel=kern.vmlinuz, initrd=initrd, root=root, data=data)


def _install_checkout(stage: Path) -> None:
    """pip install --no-deps this checkout's package into the guest's venv (in a chroot,
    so that the console script names the guest's python)."""
    src = stage / "tmp/relay-src"
    shutil.copytree(REPO / "relay", src / "relay", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(REPO / name, src / name)
    _chroot(
        stage,
        "/opt/relay/bin/pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-cache-dir",
        "/tmp/relay-src",
        what="pip install the checkout",
    )
    shutil.rmtree(src)
    for build in stage.glob("tmp/*"):
        shutil.rmtree(build, ignore_errors=True)


def _configure(stage: Path, relay_toml: str) -> None:
    etc = stage / "etc"
    (etc / "relay.toml").write_text(relay_toml)
    (etc / "hostname").write_text("powercut\n")
    (etc / "machine-id").write_text(hashlib.md5(b"relay-powercut").hexdigest() + "\n")
    (etc / "fstab").write_text("tmpfs /tmp tmpfs defaults 0 0\n")
    units = etc / "systemd/system"
    (units / "relay.service").write_text(UNIT)
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "relay.service").symlink_to("/etc/systemd/system/relay.service")
    for unit in MASKED:
        link = units / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    conf = etc / "systemd/journald.conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "powercut.conf").write_text(JOURNALD)
    (stage / STATE_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)


def _du_mb(path: Path) -> int:
    out = _run(["du", "-sm", path], "du")
    return int(out.split()[0])


def _initramfs(kern: Kernel) -> bytes:
    """A newc cpio archive: busybox, the modules, /init, and /dev/console (the kernel opens
    it before running /init; without it /init would have no output)."""
    cpio = _Cpio()
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"]:
        cpio.add(d, stat.S_IFDIR | 0o755)
    cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    cpio.add("bin/busybox", stat.S_IFREG | 0o755, kern.busybox.read_bytes())
    for ko in kern.modules:
        cpio.add(f"lib/modules/{ko.name}", stat.S_IFREG | 0o644, ko.read_bytes())
    order = "".join(f"{ko.stem}\n" for ko in kern.modules)
    cpio.add("modules", stat.S_IFREG | 0o644, order.encode())
    cpio.add("init", stat.S_IFREG | 0o755, INIT.encode())
    return cpio.close()


class _Cpio:
    """The "newc" cpio format the kernel unpacks as an initramfs (no cpio tool needed)."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1]]
        fields += [len(name) + 1, 0]
        self._ino += 1
        header = "070701" + "".join(f"{v:08x}" for v in fields)
        self._out.write(header.encode() + name.encode() + b"\0")
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def close(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self._out.getvalue()


def _say(log: io.TextIOBase | None, text: str) -> None:
    if log is not None:
        print(text, file=log, flush=True)
