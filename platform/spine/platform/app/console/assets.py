"""The console's front-end libraries: pinned npm releases, verified, unpacked into the package.

The console draws graphs with Cytoscape.js and charts with Chart.js. Neither is fetched from a
CDN at run time (machines may be offline) nor committed to git: the install step runs
``python -m spine.platform.app.console.assets``, which, for each pinned :class:`VendorAsset`,

1. skips it when every file is already in ``static/vendor/`` and matches the recorded digest;
2. downloads the release's tarball from the npm registry (``registry.npmjs.org``);
3. checks the tarball against the ``sha512`` integrity string pinned here (the registry's
   ``dist.integrity``), refusing anything else;
4. extracts only the named dist files and the licence into ``static/vendor/<name>/``.

The wheel ships ``static/vendor/`` (``[tool.hatch.build] artifacts`` in ``pyproject.toml``), so
an installed console needs no network. Standard library only: it runs before anything else is
imported. The pages tell a person when these files are missing (:func:`missing_assets`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ASSETS", "VENDOR_DIR", "AssetError", "VendorAsset", "ensure_assets", "missing_assets"]

VENDOR_DIR = Path(__file__).resolve().parent / "static" / "vendor"
REGISTRY = "https://registry.npmjs.org"


class AssetError(RuntimeError):
    """A vendor asset could not be fetched, or did not match its pinned integrity."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorAsset:
    """One pinned npm release and the files the console serves from it.

    Attributes:
        package: The npm package name.
        version: The exact version.
        integrity: The registry's ``dist.integrity`` (``sha512-<base64>``) of the tarball.
        files: Paths inside the tarball's ``package/`` folder to extract (dist files, licence).
    """

    package: str
    version: str
    integrity: str
    files: tuple[str, ...]

    @property
    def tarball_url(self) -> str:
        """Return the registry URL of the release's tarball."""
        return f"{REGISTRY}/{self.package}/-/{self.package}-{self.version}.tgz"

    @property
    def folder(self) -> Path:
        """Return where the files are extracted."""
        return VENDOR_DIR / self.package

    def present(self) -> bool:
        """Tell whether every file is extracted from this very release."""
        stamp = self.folder / "integrity.txt"
        if not stamp.is_file() or stamp.read_text().strip() != self.integrity:
            return False
        return all((self.folder / Path(name).name).is_file() for name in self.files)


ASSETS: tuple[VendorAsset, ...] = (
    VendorAsset(
        package="cytoscape",
        version="3.35.0",
        integrity="sha512-sMvBIXiGMnhkCaWz2R06FwF/27MNlS+Tqvi17foO9UhnUg3XGZccKjxsvEqQFAQYMSSZmN5SxYzUYlQ0DOJJ3g==",
        files=("dist/cytoscape.min.js", "LICENSE"),
    ),
    VendorAsset(
        package="chart.js",
        version="4.6.1",
        integrity="sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g==",
        files=("dist/chart.umd.min.js", "LICENSE.md"),
    ),
)
"""What the console's pages load (``/ui/static/vendor/<package>/<file name>``)."""


def missing_assets() -> list[str]:
    """Return ``package@version`` of each pinned asset that is not extracted."""
    return [f"{a.package}@{a.version}" for a in ASSETS if not a.present()]


def ensure_assets(*, timeout: float = 60.0) -> list[str]:
    """Fetch, verify and extract every pinned asset not yet present; return what was fetched.

    Raises:
        AssetError: A download failed, or a tarball did not match its pinned integrity.
    """
    fetched = []
    for asset in ASSETS:
        if asset.present():
            continue
        _install(asset, _download(asset, timeout=timeout))
        fetched.append(f"{asset.package}@{asset.version}")
    return fetched


def _download(asset: VendorAsset, *, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(asset.tarball_url, timeout=timeout) as answer:  # noqa: S310 - a constant https URL
            body: bytes = answer.read()
    except OSError as exc:
        raise AssetError(f"could not download {asset.tarball_url}: {exc}") from exc
    algorithm, _, expected = asset.integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, body).digest()).decode()
    if digest != expected:
        raise AssetError(
            f"{asset.package}@{asset.version}: the tarball's {algorithm} is {digest}, "
            f"not the pinned {expected}; refusing it"
        )
    return body


def _install(asset: VendorAsset, tarball: bytes) -> None:
    asset.folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for name in asset.files:
            try:
                member = archive.getmember(f"package/{name}")
                source = archive.extractfile(member)
            except KeyError as exc:
                raise AssetError(f"{asset.package}@{asset.version} has no {name}") from exc
            if source is None:
                raise AssetError(f"{asset.package}@{asset.version}: {name} is not a file")
            # Written under our own name (never the archive's path): nothing escapes the folder.
            (asset.folder / Path(name).name).write_bytes(source.read())
    (asset.folder / "integrity.txt").write_text(asset.integrity + "\n")


def main(argv: list[str] | None = None) -> int:
    """Fetch the console's assets (or, with ``--check``, only say whether they are there)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report missing assets")
    args = parser.parse_args(argv)
    if args.check:
        missing = missing_assets()
        print("console assets: " + ("missing " + ", ".join(missing) if missing else "present"))
        return 1 if missing else 0
    try:
        fetched = ensure_assets()
    except AssetError as exc:
        print(f"console assets: {exc}", file=sys.stderr)
        return 1
    done = ", ".join(fetched) if fetched else "already present"
    print(f"console assets ({VENDOR_DIR}): {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
