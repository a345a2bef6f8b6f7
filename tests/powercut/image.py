"""The guest of the power-cut harness: a small Debian 12 that boots relay from this checkout.

Built in two parts, so that a rerun costs seconds:

- **cached** (built once, under :func:`~tests.powercut.common.cache_dir`, keyed by what went
  into it): ``rootfs-<key>/``: ``debootstrap --variant=minbase`` of bookworm with python3,
  systemd as PID 1 and a venv ``/opt/relay`` holding relay's dependencies from
  ``pyproject.toml`` (the key hashes those lists and :data:`ROOTFS_RECIPE`); the kernel
  (:mod:`tests.powercut.boot`).
- **per run** (:func:`prepare`): a copy of that rootfs with this checkout ``pip install
  --no-deps``-ed into the venv, the run's ``/etc/relay.toml`` and unit, made into an ext4
  image with ``mkfs.ext4 -d`` (no loop device, no mount); an empty ext4 data disk for the
  spool; the initramfs.

The root disk is read-only (to the guest and to qemu): the only state that survives a power
cut is the data disk's, which is the spool's. systemd runs relay; journald keeps its journal
in RAM and forwards every line to the serial console, which the host reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tests.powercut.boot import initramfs, kernel
from tests.powercut.common import (
    REPO,
    STATE_DIR,
    cache_dir,
    locked,
    run_step,
    say,
)

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Debian packages of the rootfs beyond minbase, and the tools the venv build needs there.
GUEST_PACKAGES = ["python3", "python3-venv", "systemd", "systemd-sysv"]
# Changing how the rootfs is made must change its cache key: bump this.
ROOTFS_RECIPE = (
    f"2: {SUITE} minbase + {','.join(GUEST_PACKAGES)}; venv /opt/relay + build requires (upgraded)"
)
HOST_CA = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")

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


@dataclass(frozen=True)
class GuestImage:
    """What :func:`prepare` made for one run: boot these with :class:`~tests.powercut.guest.Guest`."""

    kernel: Path
    initrd: Path
    root: Path  # ext4, read-only to the guest
    data: Path  # ext4, the spool's disk (state_dir), fresh per run


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


def _chroot(root: Path, *argv: str, what: str) -> str:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    return run_step(["chroot", root, *argv], what, env=env)


# ------------------------------------------------------------------------------ cached parts


def rootfs(log: io.TextIOBase | None = None) -> Path:
    """The cached rootfs for the current dependency list, built first if missing
    (debootstrap and pip in a chroot: minutes; see the README's figures)."""
    cache = cache_dir()
    final = cache / f"rootfs-{rootfs_key()}"
    with locked(cache / ".lock"):
        if (final / ".complete").exists():
            return final
        started = time.monotonic()
        say(log, f"building the guest's rootfs in {final} (once; a few minutes)")
        work = Path(tempfile.mkdtemp(prefix="rootfs-build-", dir=cache))
        try:
            run_step(
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
            say(log, f"  debootstrap done after {time.monotonic() - started:.0f}s")
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
        say(log, f"  rootfs ready after {time.monotonic() - started:.0f}s")
        return final


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
    run_step(["cp", "-a", "--reflink=auto", base, stage], "copying the cached rootfs")
    _install_checkout(stage)
    _configure(stage, relay_toml)
    root = workdir / "root.img"
    size_mb = _du_mb(stage) + 128
    run_step(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", stage, root, f"{size_mb}M"], "mkfs root")
    shutil.rmtree(stage)
    data = workdir / "data.img"
    run_step(["mkfs.ext4", "-q", "-F", "-L", "relay", data, f"{data_size_mb}M"], "mkfs data")
    initrd = workdir / "initrd.img"
    initrd.write_bytes(initramfs(kern))
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
    out = run_step(["du", "-sm", path], "du")
    return int(out.split()[0])
