"""Output writers shared by every experiment: CSV, markdown, PNG and W&B, each carrying the provenance.

The provenance record goes in as trailing `prov_*` CSV columns, as a list at
the top of the markdown, and as a title line on the plots.
"""
import csv
import os
import textwrap
from pathlib import Path

from experiments import provenance


def write_text(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_csv(path, rows, columns, prov):
    """CSV with `columns`, then one `prov_<key>` column per provenance key (same value on every row)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(columns) + [f"prov_{k}" for k in prov])
        for r in rows:
            writer.writerow([_csv_value(r.get(c)) for c in columns] + list(prov.values()))
    return path


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def markdown_table(header, body):
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def preamble(title, prov, notes=()):
    """Markdown heading, provenance list and notes, each its own paragraph."""
    parts = [f"# {title}", provenance.markdown(prov)] + [n for n in notes if n]
    return "\n\n".join(parts) + "\n"


def title_with_provenance(figure, title, prov):
    """Figure title plus the provenance line, wrapped to the figure's width."""
    width = max(40, int(figure.get_figwidth() * 16))
    figure.suptitle(title + "\n" + textwrap.fill(provenance.one_line(prov), width), fontsize=8)


def save_figure(figure, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    return path


def log_wandb(name, rows, columns, images, prov, out_dir, group, project="fp8train-experiments"):
    """Log the rows as a W&B table and the plots as images (offline unless WANDB_MODE says otherwise)."""
    import wandb

    run = wandb.init(project=project, name=name, job_type=name, group=group, config=prov, dir=str(out_dir),
                     mode=os.environ.get("WANDB_MODE", "offline"))
    table = wandb.Table(columns=list(columns), data=[[r.get(c) for c in columns] for r in rows])
    run.log({f"{name}/table": table, **{f"{name}/{Path(p).stem}": wandb.Image(str(p)) for p in images}})
    run.finish()
