"""The `vecnest` command: `vecnest serve --host H --port P --data-dir D`.

Flags override `VECNEST_*` environment variables, which override the defaults.
"""

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vecnest", description="vecnest vector search service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="bind address (default 127.0.0.1; env VECNEST_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; env VECNEST_PORT)")
    serve.add_argument("--data-dir", help="where collections live (default ./data; env VECNEST_DATA_DIR)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_command(args)
    return 2


def serve_command(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are local directories, never downloads
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.settings import Settings

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "data_dir": args.data_dir,
                                   "log_level": args.log_level}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"vecnest: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
