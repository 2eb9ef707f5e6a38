"""python -m web: the inspection page on http://127.0.0.1:8000 for a TorchServe started by `make serve`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from web.server import make_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m web", description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="default: 8000 (config.properties' CORS origin)")
    parser.add_argument("--inference-url", default="http://127.0.0.1:8080", help="default: http://127.0.0.1:8080")
    parser.add_argument("--key-file", type=Path, default=Path("runs/serve/key_file.json"),
                        help="TorchServe's key file (default: runs/serve/key_file.json)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        server = make_server(args.port, args.inference_url, args.key_file)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"inspection page on http://127.0.0.1:{args.port}/ (service {args.inference_url}); Ctrl-C stops it")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
