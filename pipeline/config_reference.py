"""The experiment-config reference, rendered from the models' own field info.

What: ``python -m pipeline.config_reference > docs/config.md`` prints, per section of ``ExperimentConfig``, a
Markdown table ``key | type | default | meaning`` (nested sections such as ``mid.train_weights`` as dotted rows),
after a short introduction to ``base:`` inheritance and ``--set`` overrides.

Why: the field descriptions in ``pipeline/config.py`` are the documentation, so the reference cannot drift from the
code; a test checks that the committed ``docs/config.md`` equals this output.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.config import SECTIONS, ExperimentConfig, bounds, show

INTRO = """\
# Experiment configuration reference

Generated from the field descriptions in `pipeline/config.py` by
`python -m pipeline.config_reference > docs/config.md`; edit the descriptions there, not this file.

An experiment is one YAML file under `configs/`: a few top-level keys (`name`, `seed`, `output_dir`) and one mapping
per section below. Every key is optional and falls back to the default listed here. Loading is strict, so a typo
fails before any work starts: an unknown key is an error that suggests the closest valid one, values are not
converted between types (`"3"` is not an integer, `1` is not `true`; an integer is accepted where a number is
expected), numbers must be finite and within the bounds in the type column, and the checks across keys (attack and
model names, `mid.attacks` within `pool.attacks`, ...) run as well. Every problem is reported on one line that names
the key and the fix.

## Inheritance: `base:`

A file may start with `base: <path>` (relative to that file). The base is loaded first (and may have its own
`base:`), then this file's keys are merged over it section by section, so a file states only what it changes. A
variant of experiment `configs/<x>.yaml` lives in `configs/<x>/<v>.yaml`, starts with `base: ../<x>.yaml` and sets
at least `mid.variant: <v>`:

```yaml
base: ../mnist_lenet5_classic_20k.yaml
mid:
  variant: mid_60ep
  epochs: 60
```

It shares the experiment's `name` and `output_dir` (the teacher, the pool and the test sets are reused) and trains
and evaluates its own MID model.

## Overrides: `--set key.sub=value`

Every config command of the `mid` CLI takes `--set key.sub=value`, repeatable, applied after `base:` merging and
before validation. The value is parsed as YAML: `--set mid.epochs=2`, `--set mid.online_attacks=true`,
`--set "pool.attacks=[PGD_N, MIM_T]"`, `--set tracking.uri=null`, `--set mid.train_weights.cc=0`.
"""


def type_text(info: FieldInfo) -> str:
    """The type column: the YAML type in words, with its bounds and null where allowed."""
    annotation = info.annotation
    args = get_args(annotation)
    nullable = type(None) in args and get_origin(annotation) is not Literal
    if nullable:
        (annotation,) = [a for a in args if a is not type(None)]
    text = _type_name(annotation)
    limits = bounds(info)
    if limits:
        text += f" {limits}"
    if any(getattr(m, "min_length", None) for m in info.metadata):
        text = f"non-empty {text}"
    return f"{text} or null" if nullable else text


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in get_args(annotation))
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        if get_origin(item) is Literal:
            return "list of " + ", ".join(f"`{a}`" for a in get_args(item))
        return f"list[{_type_name(item)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(annotation, str(annotation))


def rows(model: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None
         ) -> Iterator[tuple[str, FieldInfo, Any]]:
    """(dotted key, field info, default) of every field of ``model``, nested sections expanded after their own row
    with the defaults their parent gives them (``mid.test_weights`` defaults differ from ``mid.train_weights``)."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        default = getattr(defaults, name) if defaults is not None else info.get_default(call_default_factory=True)
        yield key, info, default
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from rows(info.annotation, f"{key}.", default)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def table(model: type[BaseModel], sections: bool = True) -> str:
    """The Markdown table of ``model``'s fields; ``sections=False`` leaves out nested sections (the top level)."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, info, default in rows(model):
        if not sections and key.split(".")[0] in SECTIONS:
            continue
        lines.append(f"| `{key}` | {_cell(type_text(info))} | `{_cell(show(default, quote=False))}` | "
                     f"{_cell(info.description or '')} |")
    return "\n".join(lines)


def render() -> str:
    """The whole reference as Markdown."""
    parts = [INTRO, "## Top level\n", _cell(inspect.getdoc(ExperimentConfig) or "") + "\n",
             table(ExperimentConfig, sections=False) + "\n"]
    for name, model in SECTIONS.items():
        parts += [f"## `{name}`\n", _cell(inspect.getdoc(model) or "") + "\n", table(model) + "\n"]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
