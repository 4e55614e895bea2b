"""``cxrkit label serve RUN_DIR --studies DIR``: serve trained runs to clinicians with MONAI Label."""

from __future__ import annotations

import argparse
import shlex


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option, arg_type, integer, number

    p = sub.add_parser(
        "label",
        help="serve trained runs with MONAI Label (needs the label extra)",
        description="MONAI Label server for trained cxrkit runs (pip install -e \".[label]\").",
    )
    actions = p.add_subparsers(dest="label_command", metavar="ACTION")
    s = actions.add_parser(
        "serve",
        help="start a MONAI Label server for run folders on a folder of radiographs",
        description=(
            "Start `monailabel start_server` with cxrkit's app, serving each RUN_DIR as a classification "
            "model named after its folder, on a studies folder of PNG/JPEG/DICOM files (image id = file name "
            "without extension) or a DICOMweb URL. Listens on 127.0.0.1 unless --host says otherwise; never "
            "downloads anything (zoo_source github, no model zoo lookup)."
        ),
        epilog=(
            "examples:\n  cxrkit label serve runs/inat_swav-20240101-120000 --studies /data/xrays\n"
            "  curl -X POST 'http://127.0.0.1:8000/infer/inat_swav-20240101-120000?image=patient_scan&output=json'"
        ),
        formatter_class=CommandFormatter,
    )
    s.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="trained run folders to serve")
    add_option(s, "--studies", required=True, metavar="DIR_OR_URL", help="folder of radiographs, or a DICOMweb URL")
    add_option(s, "--host", default="127.0.0.1",
               help="interface to listen on (default: 127.0.0.1, this machine only; another needs --allow_remote)")
    add_option(s, "--allow_remote", action="store_true",
               help="allow a --host other computers can reach (prints what that exposes; use --token)")
    add_option(s, "--token", default=None,
               help="bearer token every request must carry, also on this computer (default $CXRKIT_LABEL_TOKEN, "
               "else a random one, printed once; `cxrkit review` run by you on this computer finds it)")
    add_option(s, "--allow_admin", action="store_true",
               help="also open MONAI Label's routes beyond review (model upload and delete, training, datastore "
               "uploads, logs, sessions, ...) to token holders (default: refused with 403)")
    add_option(s, "--max_body_mb", type=arg_type(number, minimum=0.001), default=None, metavar="MB",
               help="the largest request body in MiB (default 64: one radiograph of any format; 413 above it)")
    add_common(s, "allow_host")
    add_option(s, "--allow_origin", action="append", default=[], metavar="ORIGIN",
               help="a web viewer's origin (https://viewer.example:3000) whose browser requests are answered; "
               "repeatable (default: only the server's own; requests without an Origin, e.g. 3D Slicer, are "
               "not affected)")
    add_option(s, "--request_timeout", type=arg_type(number, minimum=0.1), default=None, metavar="S",
               help="seconds a client may take to send a request's head, and its body (default 30; then the "
               "connection is closed, or answered 408)")
    add_option(s, "--port", type=arg_type(integer, minimum=0, maximum=65535), default=8000,
               help="port (default: 8000)")
    add_option(s, "--app_dir", default=None, metavar="DIR",
               help="working copy of the app (default: $CXRKIT_LABEL_APP_DIR or ~/.cache/cxrkit/label-app)")
    add_option(s, "--dry_run", action="store_true",
               help="print the environment and command instead of starting the server")
    s.set_defaults(func=run_serve)
    a = actions.add_parser("app", help="print the folder of cxrkit's MONAI Label app (for monailabel --app)")
    a.set_defaults(func=run_app)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_app(args: argparse.Namespace) -> int:
    from cxrkit.label import APP_DIR

    print(APP_DIR)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from cxrkit.cli import CLIError
    from cxrkit.label import APP_DIR
    from cxrkit.label.server import (
        ExposureError,
        LabelServerError,
        check_exposure,
        default_app_dir,
        exposure,
        serve,
        server_command,
        server_env,
    )
    from cxrkit.label.tokens import TOKEN_ENV, new_token, token_file

    given = args.token or os.environ.get(TOKEN_ENV) or None
    token = given or new_token()
    try:
        check_exposure(args.host, args.allow_remote)
        if args.dry_run:
            app = Path(args.app_dir).expanduser().resolve() if args.app_dir else default_app_dir()
            cmd = server_command(args.run_dirs, args.studies, app, host=args.host, port=args.port)
            env = server_env(app, base={}, host=args.host, token=token, origins=args.allow_origin,
                             hosts=args.allow_host, request_timeout=args.request_timeout,
                             allow_admin=args.allow_admin, max_body_mb=args.max_body_mb)
            print(f"# `serve` first copies the app {APP_DIR} (main.py, lib/) to {app}")
            for key, value in env.items():
                shown = "'<your token>'" if key == TOKEN_ENV else shlex.quote(value)
                print(f"export {key}={shown}")
            print(shlex.join(cmd))
            return 0
        print(exposure(args.host, args.port, args.studies, [Path(r).name for r in args.run_dirs],
                       allow_admin=args.allow_admin), flush=True)
        if given is None:
            print(f"token (made now; send 'Authorization: Bearer TOKEN'): {token}\n`cxrkit review --server "
                  f"http://127.0.0.1:{args.port}` run by you on this computer reads it from {token_file(args.port)} "
                  "(readable by you only)", flush=True)
        return serve(args.run_dirs, args.studies, host=args.host, port=args.port, app_dir=args.app_dir,
                     allow_remote=args.allow_remote, token=token, origins=args.allow_origin,
                     hosts=args.allow_host, request_timeout=args.request_timeout, allow_admin=args.allow_admin,
                     max_body_mb=args.max_body_mb)
    except LabelServerError as exc:
        raise CLIError(str(exc), code=2 if isinstance(exc, ExposureError) else 1) from None
