"""``cxrkit review``: the clinician review page, and ``cxrkit review export``: reviews as a training CSV.

``cxrkit review --server URL`` serves a local web page (127.0.0.1 by default)
listing the studies of a MONAI Label server; opening one shows the image, the
class probabilities and the Grad-CAM overlay, and saves the clinician's class
as the study's ``final`` label through MONAI Label's datastore API.

``cxrkit review export --server URL OUT.csv`` writes the reviews as a CSV for
``cxrkit run training PLUGIN --dataset csv --dataset_dir OUT.csv``.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def _options(p: argparse.ArgumentParser, default: object = None) -> None:
    from cxrkit.options import add_option

    add_option(p, "--server", default=default, metavar="URL",
               help="MONAI Label server URL, e.g. http://127.0.0.1:8000 (required)")
    add_option(p, "--token", default=default,
               help="bearer token for the MONAI Label server (default $CXRKIT_LABEL_TOKEN)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option, arg_type, integer

    p = sub.add_parser(
        "review",
        help="clinician review page for a MONAI Label server; 'review export' writes the reviews as a CSV",
        description="Serve the review page, or with 'export OUT.csv' write the reviewed labels as a CSV that the "
        "csv dataset reads. The page binds to 127.0.0.1 (this computer only) unless --host says otherwise. "
        "A token for a MONAI Label server with authentication comes from --token or $CXRKIT_LABEL_TOKEN.",
        formatter_class=CommandFormatter,
    )
    _options(p)
    add_option(p, "--host", default="127.0.0.1",
               help="interface the page binds to (default 127.0.0.1: local only; another needs --allow_remote)")
    add_option(p, "--allow_remote", action="store_true",
               help="allow a --host other computers can reach (the page then requires its token)")
    add_common(p, "allow_host")
    add_option(p, "--page_token", default=None,
               help="token the page itself requires (default $CXRKIT_REVIEW_TOKEN; with --allow_remote and "
               "none given, a random one is made and printed in the page's URL)")
    add_option(p, "--port", type=arg_type(integer, minimum=0, maximum=65535), default=8100,
               help="port of the page (default 8100; 0 = any free port)")
    add_option(p, "--model", help="classification infer task (default: the server's first classification model)")
    add_option(p, "--reviewer", help="name saved with each review (default $USER)")
    add_option(p, "--run_dir", "--run", metavar="RUN_DIR",
               help="run folder of the served model: Grad-CAM is computed here when the server sends none")
    add_option(p, "--page_size", type=arg_type(integer, minimum=1), default=50, metavar="N",
               help="studies per list page (default 50)")
    p.set_defaults(func=run, action="serve")
    rsub = p.add_subparsers(dest="review_command", metavar="ACTION")
    e = rsub.add_parser(
        "export", help="write the reviewed labels as a CSV for `cxrkit run training ... --dataset csv`",
        description="Write every reviewed study (its 'final' label) as a row of OUT.csv: image path, label, "
        "study id, reviewer, time, the model's prediction and probability. Images are downloaded into "
        "OUT_images/ beside the CSV, or referenced in place with --studies.",
        formatter_class=CommandFormatter,
    )
    e.add_argument("out", metavar="OUT.csv", help="the CSV to write")
    _options(e, default=argparse.SUPPRESS)
    add_option(e, "--studies", metavar="DIR",
               help="the local folder the MONAI Label server serves: images are referenced by absolute path "
               "instead of downloaded")
    e.set_defaults(func=run, action="export")


def run(args: argparse.Namespace) -> int:
    """Serve the page or export the reviews."""
    from cxrkit.cli import CLIError
    from cxrkit.review.client import LabelClient, ReviewError

    if not args.server:
        raise CLIError("--server URL is required (the MONAI Label server, e.g. http://127.0.0.1:8000)")
    try:
        client = LabelClient(args.server, token=args.token)
        if args.action == "export":
            return _export(client, args)
        return _serve(client, args)
    except ReviewError as exc:
        raise CLIError(str(exc)) from None


def _export(client, args: argparse.Namespace) -> int:
    from cxrkit.review.export import export_reviews

    result = export_reviews(client, args.out, studies_dir=args.studies)
    where = f", images in {result.image_dir}" if result.image_dir else ""
    print(f"wrote {result.rows} reviews ({', '.join(result.classes)}) to {result.csv}{where}; "
          f"{result.skipped} studies not reviewed")
    others = [p.name for p in result.csv.parent.glob("*.csv") if p != result.csv]
    if others:
        print(f"note: {result.csv.parent} holds other CSV files ({', '.join(sorted(others))}); the csv dataset "
              "reads the only .csv of its folder, so export into a folder of its own to retrain")
    print(f"retrain: cxrkit run training PLUGIN --dataset csv --dataset_dir {result.csv.parent}")
    return 0


def _serve(client, args: argparse.Namespace) -> int:
    import os
    import secrets

    from cxrkit.cli import CLIError
    from cxrkit.review.app import ReviewApp
    from cxrkit.review.server import ReviewServer
    from cxrkit.serve.guard import is_loopback

    local = is_loopback(args.host)
    if not local and not args.allow_remote:
        raise CLIError(
            f"--host {args.host} would let other computers open the review page: every study's radiograph, the "
            f"model's predictions and Grad-CAM maps, and saving reviews into {client.url} as reviewer "
            f"{args.reviewer or '$USER'}. Pass --allow_remote to do that (the page then requires a token, printed "
            "with its URL; traffic is plain HTTP, so use a trusted network or an HTTPS proxy: docs/review.md), or "
            "leave --host at 127.0.0.1.", code=2)
    token = args.page_token or os.environ.get("CXRKIT_REVIEW_TOKEN") or None
    if not local and token is None:
        token = secrets.token_urlsafe(24)
    app = ReviewApp(client, model=args.model, reviewer=args.reviewer, run_dir=args.run_dir, page_size=args.page_size)
    app.studies()  # fail now, with a clear message, if the MONAI Label server is unusable
    _ = app.model
    try:
        server = ReviewServer(app, host=args.host, port=args.port, token=token, allowed_hosts=args.allow_host)
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port} ({exc.strerror}); pick another --port") from None
    if server.local:
        print(f"review page: {server.url} (local only: bound to {args.host}; not reachable from other computers)")
    else:
        print(f"review page: {server.url} (bound to {args.host} with --allow_remote: other computers that reach "
              "this one can open it with this URL, which carries the page token; without the token they get 401)")
        print(f"exposed to them: every study's radiograph, the predictions and Grad-CAM maps of {app.model}, and "
              f"saving reviews as {app.reviewer}; traffic is plain HTTP (docs/review.md#security)")
    print(f"MONAI Label: {client.url}, model {app.model}, reviewer {app.reviewer}. Ctrl+C to stop.", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
