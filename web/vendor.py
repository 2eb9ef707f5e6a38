"""python -m web.vendor PACKAGE VERSION SHA512 OUT: the file named like OUT from an npm package's tarball, taken
from the npm registry and checked against the tarball's pinned sha512 before anything is written (used for
axe-core/axe.min.js, which the accessibility test loads from a local file)."""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"


def fetch(package: str, version: str, sha512: str, member: str) -> bytes:
    """`member` of the package's tarball (e.g. package/axe.min.js), once the tarball's sha512 matches."""
    url = f"{REGISTRY}/{package}/-/{package}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=120) as answer:
        tarball = answer.read()
    digest = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != sha512:
        raise ValueError(f"{url}: sha512 {digest} does not match the pinned {sha512}; refusing it")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        found = archive.extractfile(member)
        if found is None:
            raise ValueError(f"{url} has no {member}")
        return found.read()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: python -m web.vendor PACKAGE VERSION SHA512 OUT", file=sys.stderr)
        return 2
    package, version, sha512, out = argv
    from training.inference.images import write_atomic

    try:
        data = fetch(package, version, sha512, f"package/{Path(out).name}")
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    write_atomic(Path(out), data)
    print(f"wrote {out} ({package} {version}, {len(data)} bytes, sha512 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
