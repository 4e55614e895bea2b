"""One command-line vocabulary: every option of every (sub)command, walked from the parsers.

Rules (see ``cxrkit.options``): options are spelled as the config ids
(``--image_size``); a hyphenated spelling is only ever the twin of an
underscore one; an option name means the same (destination, type, action) in
every command; the dataset and output folders are ``--dataset_dir`` and
``--output_dir``; old spellings (``--root``, ``--out``...) stay accepted but are
never an option's own name anywhere.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from cxrkit.bench.__main__ import build_parser as bench_parser
from cxrkit.bench.label_load import build_parser as label_load_parser
from cxrkit.cli import build_parser, main
from cxrkit.experiment.benchmark import build_parser as probe_benchmark_parser

#: names that meant a dataset or output folder before the vocabulary (accepted as old spellings only).
FOLDER_DIALECT = {"--root", "--out", "--dir", "--output", "--outdir", "--out_dir", "--output_folder", "--data",
                  "--data_dir", "--dataset_root", "--workdir", "--folder"}


def walk(parser: argparse.ArgumentParser, path: str):
    """``(command path, action)`` for every action of ``parser`` and its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")
        else:
            yield path, action


def all_actions() -> list[tuple[str, argparse.Action]]:
    return [*walk(build_parser(), "cxrkit"), *walk(bench_parser(), "python -m cxrkit.bench"),
            *walk(probe_benchmark_parser(), "python -m cxrkit.experiment.benchmark"),
            *walk(label_load_parser(), "python -m cxrkit.bench.label_load")]


def signature(action: argparse.Action) -> tuple:
    """What an option means: destination, action kind, value type (and its bounds), arity, constant, choices."""
    kind = getattr(action.type, "reader", action.type)
    kind = (kind[0].__name__, kind[1]) if isinstance(kind, tuple) else getattr(kind, "__name__", kind)
    choices = tuple(sorted(action.choices)) if action.choices else None
    return action.dest, type(action).__name__, kind, action.nargs, action.const, choices


def vocabulary_slips(actions: list[tuple[str, argparse.Action]]) -> list[str]:
    slips: list[str] = []
    meaning: dict[str, tuple[tuple, str]] = {}
    canonical: set[str] = set()
    legacy: dict[str, str] = {}
    for where, action in actions:
        if isinstance(action, argparse._HelpAction) or action.dest == "verbose":
            continue
        if not action.option_strings:
            if action.dest in ("root", "dataset_dir", "output_dir", "out_dir"):
                slips.append(f"{where}: the folder is a positional {action.dest!r}; use --dataset_dir/--output_dir")
            continue
        old = set(getattr(action, "legacy", ()))
        name = action.option_strings[0]
        canonical.add(name)
        if not re.fullmatch(r"--[a-z][a-z0-9_]*", name):
            slips.append(f"{where} {name}: not spelled --words_with_underscores")
        for text in action.option_strings:
            if text.startswith("--") and "-" in text[2:]:
                twin = text[:2] + text[2:].replace("-", "_")
                if twin not in action.option_strings:
                    slips.append(f"{where} {text}: hyphenated without its underscore twin {twin}")
            elif not text.startswith("--"):
                slips.append(f"{where} {text}: short options are for -h and -v only")
        for text in old:
            legacy[text] = f"{where} {name}"
        if name in FOLDER_DIALECT:
            slips.append(f"{where} {name}: a dataset/output folder is --dataset_dir / --output_dir")
        text = (action.help or "").lower()
        if "dataset folder" in text and name != "--dataset_dir":
            slips.append(f"{where} {name}: the dataset folder is --dataset_dir")
        if "output folder" in text and name != "--output_dir":
            slips.append(f"{where} {name}: the output folder is --output_dir")
        sig = signature(action)
        if name in meaning and meaning[name][0] != sig:
            slips.append(f"{name} means {meaning[name][0]} in {meaning[name][1]} but {sig} in {where}")
        meaning.setdefault(name, (sig, where))
    for text, where in legacy.items():
        if text in canonical:
            slips.append(f"{where}: old spelling {text} is another option's name elsewhere")
    return slips


def test_every_option_follows_the_vocabulary():
    actions = all_actions()
    commands = {where for where, _ in actions}
    assert {"cxrkit run", "cxrkit compare", "cxrkit demo", "cxrkit bench", "cxrkit data check", "cxrkit predict",
            "cxrkit weights check", "cxrkit label serve", "cxrkit review export"} <= commands
    assert vocabulary_slips(actions) == []


def test_the_walk_catches_dialect_slips():
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers()
    a = sub.add_parser("a")
    a.add_argument("--image-size", type=int)
    a.add_argument("--root", help="the dataset folder")
    a.add_argument("--device", nargs="?", const="cuda")
    a.add_argument("root_folder", metavar="ROOT")
    b = sub.add_parser("b")
    b.add_argument("--device", default="auto")
    b.add_argument("--out", help="the output folder")
    slips = "\n".join(vocabulary_slips(list(walk(parser, "x"))))
    assert "--image-size: not spelled" in slips and "without its underscore twin --image_size" in slips
    assert "--root: a dataset/output folder" in slips and "the dataset folder is --dataset_dir" in slips
    assert "--out: a dataset/output folder" in slips and "the output folder is --output_dir" in slips
    assert "--device means" in slips  # a bare --device (nargs ?) in one command, a value in the other


@pytest.mark.parametrize("argv, dest, value", [
    (["compare", "--root", "D"], "dataset_dir", Path("D")),
    (["compare", "--dataset-dir", "D"], "dataset_dir", Path("D")),
    (["compare", "--dataset_dir", "D", "--out", "O"], "output_dir", Path("O")),
    (["compare", "--dataset_dir", "D", "--cache_dir", "C"], "feature_cache", "C"),
    (["demo", "--dir", "O"], "output_dir", Path("O")),
    (["demo", "--image-size", "48"], "image_size", 48),
    (["demo", "--per-class", "9"], "per_class", 9),
    (["demo", "--no-progress"], "progress", False),
    (["report", "R", "--out", "O"], "output_dir", Path("O")),
    (["report", "R", "--positive", "COVID"], "positive_class", "COVID"),
    (["compare-report", "R", "--out", "O"], "output_dir", Path("O")),
    (["export", "R", "--out", "m.ts"], "output_file", Path("m.ts")),
    (["export", "R", "--no-check"], "check", False),
    (["predict", "R", "x.png", "--trust"], "trust_weights", True),
    (["predict", "R", "x.png", "--batch-size", "3"], "batch_size", 3),
    (["weights", "check", "imagenet", "--trust", "--strict-hash"], "strict_hash", True),
    (["weights", "import", "imagenet", "f.pth", "--trust"], "trust_weights", True),
    (["label", "serve", "R", "--studies", "S", "--app-dir", "A", "--dry-run"], "app_dir", "A"),
    (["review", "--run", "R"], "run_dir", "R"),
    (["bench", "--output", "O", "--workdir", "W"], "work_dir", "W"),
    (["data", "check", "--root", "D"], "dataset_dir", Path("D")),
])
def test_old_spellings_are_still_accepted(argv, dest, value):
    args, _ = build_parser().parse_known_args(argv)
    assert getattr(args, dest) == value


def test_bad_values_are_usage_errors_naming_the_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--epochs", "0"])
    assert exit_info.value.code == 2 and "--epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", "--dataset_dir", "D", "--device", "gpu"])
    assert "unknown --device 'gpu'" in capsys.readouterr().err
    assert main(["data", "check", "--no_progress"]) == 2  # no dataset folder at all
    assert "--dataset_dir" in capsys.readouterr().err


def test_help_shows_the_config_spelling_only(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "--image_size PX" in text and "--output_dir DIR" in text and "--no_progress" in text
    assert "--image-size" not in text and "--dir" not in text.replace("--output_dir", "")


def test_run_takes_no_progress_like_every_other_command(monkeypatch, capsys):
    import cxrkit.api

    seen = []
    monkeypatch.setattr(cxrkit.api, "run_bundle", lambda workflow, bundle, overrides: seen.append(overrides))
    assert main(["run", "training", "inat_swav", "--dataset-dir", "D", "--no-progress"]) == 0
    assert seen == [{"dataset_dir": "D", "progress": False}]
    assert main(["run", "training", "inat_swav", "--no_progress", "--progress", "true"]) == 2
    assert "--no_progress" in capsys.readouterr().err and len(seen) == 1


def test_servers_take_more_host_names_the_same_way(monkeypatch):
    import cxrkit.review.app
    import cxrkit.review.server

    for argv in (["review"], ["label", "serve", "R", "--studies", "S"]):
        args, _ = build_parser().parse_known_args([*argv, "--allow-host", "a.example", "--allow_host", "b.example"])
        assert args.allow_host == ["a.example", "b.example"]

    class App:  # the review page's app without a MONAI Label server behind it
        model, reviewer = "m", "r"

        def __init__(self, client, **kwargs):
            pass

        def studies(self):
            return []

    seen = {}

    def server(app, **kwargs):
        seen.update(kwargs)
        raise OSError(98, "in use")

    monkeypatch.setattr(cxrkit.review.app, "ReviewApp", App)
    monkeypatch.setattr(cxrkit.review.server, "ReviewServer", server)
    assert main(["review", "--server", "http://127.0.0.1:9", "--allow_host", "proxy.example"]) == 1
    assert seen["allowed_hosts"] == ["proxy.example"] and seen["host"] == "127.0.0.1"
