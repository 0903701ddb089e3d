"""The `vecnest` command: `vecnest serve --host H --port P --data-dir D`, `vecnest health` (the
container health check), `vecnest backup` / `restore`, `vecnest migrate` (into the Qdrant
backend), `vecnest import` / `export` (bulk, through the Python client) and `vecnest finetune`.

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
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (env VECNEST_TLS_CERT)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert (env VECNEST_TLS_KEY)")
    serve.add_argument(
        "--role",
        choices=["all", "serve", "maintenance"],
        help="with backend=qdrant: serve (a stateless replica) or maintenance (the one process that steers ef); "
        "default all (env VECNEST_ROLE)",
    )
    health = commands.add_parser("health", help="exit 0 when the local server answers /healthz (or /readyz)")
    health.add_argument("--port", type=int, help="default: env VECNEST_PORT, else 8000")
    health.add_argument("--ready", action="store_true", help="require readiness, not just liveness")
    health.add_argument("--timeout", type=float, default=2.0)
    backup = commands.add_parser(
        "backup",
        help="archive every collection of a data directory (the server must be stopped; "
        "while it runs, use POST /v1/collections/{name}/snapshots)",
    )
    backup.add_argument("out", help="folder for the archives (one <collection>-<id>.tar each)")
    backup.add_argument("--data-dir", default=os.environ.get("VECNEST_DATA_DIR", "data"))
    restore = commands.add_parser(
        "restore", help="recreate a collection from an archive in a data directory (the server must be stopped)"
    )
    restore.add_argument("archive", help="a .tar made by vecnest backup or downloaded from the snapshots API")
    restore.add_argument("--data-dir", default=os.environ.get("VECNEST_DATA_DIR", "data"))
    restore.add_argument("--collection", help="restore under this name (default: the archive's)")
    restore.add_argument("--replace", action="store_true", help="replace an existing collection of that name")
    move = commands.add_parser(
        "migrate",
        help="copy a collection of a data directory into a shared backend (Qdrant, or Milvus), resumably "
        "(the server must be stopped)",
    )
    move.add_argument("collection", help="the collection to copy (its name stays)")
    move.add_argument("--data-dir", default=os.environ.get("VECNEST_DATA_DIR", "data"))
    move.add_argument("--to-url", help="the Qdrant server or cluster (default: env VECNEST_QDRANT_URL)")
    move.add_argument("--to-path", help="qdrant-client local mode folder instead (default: env VECNEST_QDRANT_PATH)")
    move.add_argument("--to-milvus", help="a Milvus server instead, e.g. http://milvus:19530 (dense collections)")
    move.add_argument("--api-key", help="Qdrant's API key, or Milvus's token (default: env VECNEST_QDRANT_API_KEY)")
    move.add_argument("--batch", type=int, default=256, help="documents per write")
    load = commands.add_parser(
        "import", help="bulk-load documents from JSON Lines or a BEIR corpus, resumably, with a progress bar"
    )
    load.add_argument("file", help="JSONL (id, text | vector | vectors, metadata), or a BEIR corpus (file or folder)")
    load.add_argument("--collection", required=True)
    load.add_argument("--batch", type=int, default=256, help="documents per request")
    load.add_argument("--create", action="store_true", help="create the collection when it does not exist")
    load.add_argument("--model", help="with --create: the model (default: the server's; none for vectors)")
    load.add_argument("--dims", help="with --create: Matryoshka dims to index, comma-separated")
    load.add_argument("--restart", action="store_true", help="ignore what an earlier, interrupted run wrote")
    dump = commands.add_parser("export", help="write every document of a collection as JSON Lines (.gz: gzipped)")
    dump.add_argument("collection")
    dump.add_argument("file")
    dump.add_argument("--no-vectors", action="store_true", help="text and metadata only")
    for command in (load, dump):
        command.add_argument("--url", help="a vecnest server (default: env VECNEST_URL, else http://127.0.0.1:8000)")
        command.add_argument("--api-key", help="default: env VECNEST_API_KEY")
        command.add_argument("--data-dir", help="the engine in-process on this data directory instead (no server)")
        command.add_argument("--quiet", action="store_true", help="no progress bar")
    tune = commands.add_parser(
        "finetune",
        help="fine-tune a model into a Matryoshka model (CPU)",
        description="Fine-tune a local sentence-transformers model with MatryoshkaLoss "
        "(--2d: Matryoshka2dLoss) on (query, positive) pairs and write a model "
        "directory vecnest can serve.",
    )
    tune.add_argument("--base", default="all-MiniLM-L6-v2", help="model alias or local directory to start from")
    tune.add_argument("--pairs", required=True, help='JSONL: {"query": ..., "positive": ..., "negative"?: ...}')
    tune.add_argument("--out", required=True, help="directory for the new model (and its checkpoints)")
    tune.add_argument("--dims", help="Matryoshka dims, comma-separated (default 384,256,128,64,32)")
    tune.add_argument("--2d", dest="layers_2d", action="store_true", help="also train shallow layers (2D Matryoshka)")
    tune.add_argument(
        "--init",
        choices=["pca", "none"],
        default="pca",
        help="pca: start from the model plus its PCA rotation (prefixes start strong); none: as is",
    )
    tune.add_argument("--epochs", type=int, default=2)
    tune.add_argument("--batch-size", type=int, default=32)
    tune.add_argument("--lr", type=float, default=3e-5)
    tune.add_argument("--max-seq-length", type=int, default=256)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_command(args)
    if args.command == "health":
        return health_command(args)
    if args.command == "migrate":
        from service.migrate import migrate_command

        return migrate_command(args)
    if args.command in ("backup", "restore"):
        return backup_command(args)
    if args.command in ("import", "export"):
        return transfer_command(args)
    if args.command == "finetune":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from service.finetune import main as finetune_main

        return finetune_main(args)
    return 2


def transfer_command(args: argparse.Namespace) -> int:
    """`vecnest import` / `export` through the Python client (clients/python): to a server over
    HTTP, or with the engine in-process on --data-dir."""
    try:
        import vecnest
        from vecnest.transfer import export_collection, import_file, inferred_config
    except ImportError:
        print("vecnest: import/export use the Python client: pip install -e clients/python", file=sys.stderr)
        return 2
    if args.data_dir is not None:
        target: dict = {"path": args.data_dir}
    else:
        target = {"url": args.url or os.environ.get("VECNEST_URL", "http://127.0.0.1:8000")}
        target["api_key"] = args.api_key or os.environ.get("VECNEST_API_KEY")
    try:
        with vecnest.Client(**target) as client:
            if args.command == "export":
                vectors, progress = not args.no_vectors, not args.quiet
                n = export_collection(client, args.collection, args.file, vectors=vectors, progress=progress)
                print(f"exported {n} documents of {args.collection} to {args.file}", file=sys.stderr)
                return 0
            create = None
            if args.create:
                create = inferred_config(args.file)
                if args.model:
                    create["model"] = args.model
                if args.dims:
                    create["dims"] = [int(d) for d in args.dims.split(",")]
            result = import_file(
                client,
                args.file,
                args.collection,
                batch_size=args.batch,
                create=create,
                resume=not args.restart,
                progress=not args.quiet,
            )
            resumed = f" (resumed: {result.skipped} written by an earlier run)" if result.skipped else ""
            print(f"imported {result.imported} documents into {args.collection}{resumed}", file=sys.stderr)
            return 0
    except (vecnest.VecnestError, OSError, ValueError) as exc:
        print(f"vecnest: {exc}", file=sys.stderr)
        return 1


def health_command(args: argparse.Namespace) -> int:
    """Probe the server on this host, as a container health check does (stdlib only: fast)."""
    import ssl
    import urllib.request

    host = os.environ.get("VECNEST_HOST", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    port = args.port or int(os.environ.get("VECNEST_PORT", "8000"))
    tls = bool(os.environ.get("VECNEST_TLS_CERT"))
    url = f"{'https' if tls else 'http'}://{host}:{port}/{'readyz' if args.ready else 'healthz'}"
    # The server probing itself on this host: its certificate may be self-signed or name another host.
    context = ssl._create_unverified_context() if tls else None
    try:
        with urllib.request.urlopen(url, timeout=args.timeout, context=context) as response:
            ok = response.status == 200
    except OSError as exc:  # refused, timed out, or an HTTP error status
        print(f"vecnest: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def backup_command(args: argparse.Namespace) -> int:
    """`vecnest backup` / `vecnest restore` on a data directory no server holds (its lock says)."""
    from datetime import UTC, datetime

    from index import Catalog, VecnestError, create_archive

    try:
        catalog = Catalog(args.data_dir)
    except VecnestError as exc:
        print(f"vecnest: {exc.message}; stop the server, or use the snapshots API while it runs", file=sys.stderr)
        return 1
    try:
        if args.command == "restore":
            from service.embedder import check_encoder_info

            collection, info = catalog.restore(args.archive, args.collection, args.replace, check_encoder_info)
            print(f"restored {collection.name!r}: {info.documents} documents as of seq {info.seq}")
            return 0
        catalog.open_all()
        now = datetime.now(UTC)
        for name in catalog.names():
            backup_id = f"{name}-{now:%Y%m%dT%H%M%SZ}"
            info = create_archive(catalog.get(name), args.out, backup_id, now.isoformat())
            print(f"{args.out}/{backup_id}.tar: {info.documents} documents, seq {info.seq}, {info.bytes} bytes")
        for name, reason in catalog.failed().items():
            print(f"vecnest: collection {name!r} was not backed up: {reason}", file=sys.stderr)
        return 1 if catalog.failed() else 0
    except VecnestError as exc:
        print(f"vecnest: {exc.message}", file=sys.stderr)
        return 1
    finally:
        catalog.close()


def serve_command(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are local directories, never downloads
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.auth import unauthenticated_exposure
    from service.settings import Settings

    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "data_dir": args.data_dir,
            "log_level": args.log_level,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "role": args.role,
        }.items()
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"vecnest: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    exposed = unauthenticated_exposure(settings)
    if exposed is not None:
        print(f"vecnest: refusing to start: {exposed}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_open_files_limit()
    fatal: list[str] = []

    def stop(reason: str) -> None:
        fatal.append(reason)
        server.should_exit = True

    config = uvicorn.Config(
        create_app(settings, on_fatal=stop),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=30,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )
    server = uvicorn.Server(config)
    server.run()
    if fatal:
        print(f"vecnest: could not start: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: each collection holds a few file
    descriptors (SQLite connections, the vector file maps), more while it is busy."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    logging.getLogger("vecnest").info("open files limit: %d", resource.getrlimit(resource.RLIMIT_NOFILE)[0])


if __name__ == "__main__":
    sys.exit(main())
