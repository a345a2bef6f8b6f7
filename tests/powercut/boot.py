"""The guest's kernel and initramfs.

Debian's cloud kernel (``linux-image-cloud-amd64``) has ext4 built in but virtio (PCI, block,
net) as modules, so something must load them before the root can be mounted. Rather than
initramfs-tools (udev, a 20+ MB image, a slower boot under TCG, about a hundred boots per
proof), the initramfs here is busybox-static, the nine modules that chain needs and a short
``/init`` (:data:`INIT`): load them, mount the root read-only and the data disk on relay's
state dir, set slirp's fixed address, ``switch_root`` to systemd. It is ~2.5 MB, uncompressed.
The kernel, the modules and busybox come from ``apt-get download`` once and are cached.
"""

from __future__ import annotations

import io
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.powercut.common import (
    GUEST_IP,
    HOST_IP,
    STATE_DIR,
    ImageError,
    cache_dir,
    locked,
    run_step,
    say,
)

KERNEL_META = "linux-image-cloud-amd64"  # depends on the current ABI's package
# The modules /init loads (their dependencies first, from each module's .modinfo).
MODULES = ["virtio_pci", "virtio_blk", "virtio_net"]

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


@dataclass(frozen=True)
class Kernel:
    """A kernel, the modules the initramfs loads (in load order) and a static busybox."""

    vmlinuz: Path
    modules: list[Path]
    busybox: Path


def kernel(log: io.TextIOBase | None = None) -> Kernel:
    """Debian's cloud kernel (the package ``linux-image-cloud-amd64`` points at), its virtio
    modules and busybox-static, fetched with ``apt-get download`` once and cached."""
    cache = cache_dir()
    package = _kernel_package()
    final = cache / f"kernel-{package}"
    with locked(cache / ".lock"):
        if not (final / ".complete").exists():
            say(log, f"fetching {package} and busybox-static into {final}")
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
    out = run_step(["apt-cache", "depends", KERNEL_META], f"apt-cache depends {KERNEL_META}")
    found = re.search(r"Depends: (linux-image-\S+-cloud-amd64)", out)
    if found is None:
        raise ImageError(f"{KERNEL_META} is unknown to apt here (apt-get update?)")
    return found.group(1)


def _fetch_kernel(package: str, work: Path) -> None:
    debs = work / "debs"
    debs.mkdir()
    run_step(["apt-get", "download", package, "busybox-static"], "apt-get download", cwd=debs)
    for deb in debs.glob("*.deb"):
        run_step(["dpkg-deb", "-x", deb, debs / "x"], f"dpkg-deb -x {deb.name}")
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


def initramfs(kern: Kernel) -> bytes:
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
