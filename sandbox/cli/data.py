"""``sandboxctl data …``: the controller's data-plane tasks."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sandbox.data import metadata
from sandbox.data.generate import generate as generate_extract
from sandbox.data.onboard import onboard as onboard_dataset
from sandbox.data.onboard import read_report
from sandbox.data.pseudonym import create_key
from sandbox.data.report import render_markdown

_dir = click.Path(path_type=Path, file_okay=False)
_file = click.Path(path_type=Path, dir_okay=False)


@click.group()
def data() -> None:
    """Synthetic extracts, onboarding into restricted datasets, risk reports, catalog."""


@data.command()
@click.option("--patients", type=int, default=100_000, show_default=True,
              help="Number of patients (about 11 visits each).")
@click.option("--seed", type=int, default=20251231, show_default=True,
              help="Random seed; the same seed gives the same extract.")
@click.option("--out", type=_dir, required=True, help="Directory to create.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def generate(patients: int, seed: int, out: Path, force: bool) -> None:
    """Write a synthetic raw, identifiable EMR extract (one Parquet file per table)."""
    with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("patients"), TimeElapsedColumn(),
                  console=Console(stderr=True)) as progress:
        task = progress.add_task("generate", total=patients)
        summary = generate_extract(patients, seed, out, replace=force,
                                   on_progress=lambda done: progress.update(task, completed=done))
    rows = ", ".join(f"{table} {count:,}" for table, count in summary.rows.items())
    click.echo(f"wrote {out}: {rows}")


@data.command()
@click.argument("key_file", type=_file)
def keygen(key_file: Path) -> None:
    """Create a new pseudonymisation key (32 random bytes, hex, mode 0600)."""
    create_key(key_file)
    click.echo(f"wrote {key_file}; keep it apart from every dataset made with it")


@data.command()
@click.option("--raw", type=_dir, required=True, help="Raw extract directory.")
@click.option("--spec", "spec_path", type=_file, required=True, help="Onboarding spec (TOML).")
@click.option("--key-file", type=_file, required=True, help="Pseudonymisation key file.")
@click.option("--out", type=_dir, required=True, help="Dataset directory to create.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--dummy-rows", type=int, default=2000, show_default=True,
              help="Rows of dummy data to generate from the metadata.")
def onboard(raw: Path, spec_path: Path, key_file: Path, out: Path, force: bool,
            dummy_rows: int) -> None:
    """De-identify a raw extract into a restricted dataset, or refuse and say why."""
    with Console(stderr=True).status("onboarding…"):
        result = onboard_dataset(raw, spec_path, key_file, out, replace=force,
                                 dummy_rows=dummy_rows)
    size = result.metadata["sample_size"]
    after = result.report["after"]
    click.echo(f"published {result.metadata['id']} {result.metadata['version']} to {out}: "
               f"{size['records']:,} records of {size['patients']:,} patients, "
               f"k = {after['k_patients']}, l = {after['l_diversity']}")


@data.command()
@click.argument("directory", type=_dir)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
def report(directory: Path, as_json: bool) -> None:
    """Print the re-identification risk report of an onboarded dataset."""
    document = read_report(directory)
    click.echo(json.dumps(document, ensure_ascii=False, indent=2) if as_json
               else render_markdown(document))


@data.command()
@click.argument("directories", type=_dir, nargs=-1, required=True)
@click.option("--lang", type=click.Choice(["zh", "en"]), default="zh", show_default=True)
def catalog(directories: tuple[Path, ...], lang: str) -> None:
    """Print the catalog entries of onboarded datasets."""
    for directory in directories:
        meta = metadata.load(directory).document()
        size = meta["sample_size"]
        labels = {"zh": ("样本量", "患者", "记录", "年份", "等级", "申请条件", "字段"),
                  "en": ("sample size", "patients", "records", "years", "grade",
                         "application conditions", "fields")}[lang]
        click.echo(f"{meta['id']} {meta['version']} — {meta['title'][lang]}")
        click.echo(f"  {meta['description'][lang]}")
        click.echo(f"  {labels[4]}: {meta['grade']}; {labels[0]}: {size['patients']:,} "
                   f"{labels[1]}, {size['records']:,} {labels[2]} "
                   f"({meta['unit'][lang]})"
                   + (f"; {labels[3]}: {meta['years'][0]}–{meta['years'][1]}"
                      if meta["years"] else ""))
        click.echo(f"  {labels[5]}: {meta['application_conditions'][lang]}")
        click.echo(f"  {labels[6]}:")
        for field in next(iter(meta["tables"].values()))["fields"]:
            extra = ""
            if field.get("bounds"):
                extra = f" [{field['bounds'][0]:g}, {field['bounds'][1]:g}]"
            elif field.get("categories"):
                cats = field["categories"]
                extra = f" {{{', '.join(cats[:6])}{', …' if len(cats) > 6 else ''}}} " \
                        f"({len(cats)})"
            click.echo(f"    {field['name']:<16} {field['type']:<8} "
                       f"{field['description'][lang]}{extra}")
